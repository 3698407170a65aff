"""A small builder for one self-contained HTML page (no external assets, all text escaped)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolens.files import atomic_write_text

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.note{color:#555;font-size:0.9em} img{max-width:100%}
"""


class Page:
    """Sections appended in order; :meth:`write` saves the page atomically."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str = "") -> None:
        klass = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{klass}>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1) -> None:
        def cell(tag: str, value: Any, index: int) -> str:
            klass = ' class="l"' if index < left_columns else ""
            return f"<{tag}{klass}>{html.escape(str(value))}</{tag}>"

        head = "".join(cell("th", h, i) for i, h in enumerate(header))
        body = "".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, figure: Any, caption: str) -> None:
        """Embed a matplotlib figure as a PNG data URI."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw_html(self, fragment: str) -> None:
        """Trusted markup produced by a library (e.g. circuitsvis); never corpus text."""
        self.parts.append(fragment)

    def render(self) -> str:
        title = html.escape(self.title)
        body = "\n".join(self.parts)
        return (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>\n{body}\n</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.render())
