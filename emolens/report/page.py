"""One self-contained HTML page: escaped text, inline plots, circuitsvis views, site navigation.

No page ever references a network resource. Plots are PNG data URIs; circuitsvis views
use the JavaScript bundle shipped inside the ``circuitsvis`` wheel, inlined **once** per
page (in ``<head>``), and each view is a ``<div>`` plus a one-line render call whose
properties are JSON with ``<``, ``>`` and ``&`` escaped (so no text can close the script).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from emolens.files import atomic_write_text

STYLE = """
:root{--fg:#1d1d1f;--bg:#ffffff;--muted:#555;--line:#ccc;--head:#f0f0f3;--accent:#1f5fbf;--card:#f7f7f9}
@media (prefers-color-scheme: dark){
 :root{--fg:#e6e6e6;--bg:#16171a;--muted:#a8a8a8;--line:#444;--head:#26282d;--accent:#8ab4f8;--card:#1f2125}
}
body{font-family:system-ui,sans-serif;max-width:1150px;margin:0 auto;padding:0 1em 3em;color:var(--fg);
 background:var(--bg);line-height:1.45}
a{color:var(--accent)}
nav{position:sticky;top:0;background:var(--bg);border-bottom:1px solid var(--line);padding:.5em 0;z-index:10;
 display:flex;flex-wrap:wrap;gap:.3em .9em;font-size:.92em}
nav a{text-decoration:none} nav a.current{font-weight:700;text-decoration:underline}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid var(--line);padding:3px 8px;text-align:right;vertical-align:top}
th{background:var(--head)} td.l,th.l{text-align:left}
.note{color:var(--muted);font-size:.9em} img{max-width:100%;background:#fff;border-radius:4px}
figure{margin:1em 0} figcaption{color:var(--muted);font-size:.9em}
.cv-view{background:#fff;color:#1d1d1f;border-radius:4px;padding:6px;margin:.8em 0;min-height:2em;overflow-x:auto}
.cv-title{font-weight:600;margin-top:1.2em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em;margin:.8em 0}
.pair>div{background:var(--card);border:1px solid var(--line);border-radius:4px;padding:.6em}
.pair h4{margin:0 0 .4em} .pair pre{white-space:pre-wrap;margin:0;font-family:inherit}
@media (max-width:760px){.pair{grid-template-columns:1fr}}
.failed{border-left:4px solid #c0392b;padding-left:.6em}
"""

VIEW_BOOT = (
    "function emolensView(id,name,props){try{CircuitsVis.render(id,CircuitsVis[name],props);}"
    'catch(e){console.error("emolens view "+id+" ("+name+"): "+e);}}'
)


@cache
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle from the installed wheel, safe to inline in a ``<script>``."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall circuitsvis (pip install --force-reinstall circuitsvis)")
    source = path.read_text(encoding="utf-8")
    source = "\n".join(line for line in source.splitlines() if not line.startswith("//# sourceMappingURL="))
    return source.replace("</script", "<\\/script")


def script_json(value: Any) -> str:
    """JSON for inside a ``<script>``: finite numbers only, and no character that could end the script."""
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("a view's values contain NaN or infinity; replace them before drawing the view") from None
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


class Page:
    """Sections appended in order; :meth:`write` saves the page atomically.

    ``nav`` is a list of ``(label, href)`` pairs shown at the top of the page; the entry
    whose href equals ``filename`` is marked as the current page.
    """

    def __init__(self, title: str, nav: Sequence[tuple[str, str]] = (), filename: str = "index.html") -> None:
        self.title = title
        self.nav = list(nav)
        self.filename = filename
        self.parts: list[str] = []
        self.view_count = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str = "") -> None:
        klass = f' class="{html.escape(css_class)}"' if css_class else ""
        self.parts.append(f"<p{klass}>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1) -> None:
        def cell(tag: str, value: Any, index: int) -> str:
            klass = ' class="l"' if index < left_columns else ""
            return f"<{tag}{klass}>{html.escape(str(value))}</{tag}>"

        head = "".join(cell("th", h, i) for i, h in enumerate(header))
        body = "".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, figure: Any, caption: str) -> None:
        """Embed a matplotlib figure as a PNG data URI (the caller closes the figure)."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def link(self, text: str, href: str, note: str = "") -> None:
        """A paragraph with one link to another page of the report (``href`` relative)."""
        tail = f" <span class='note'>{html.escape(note)}</span>" if note else ""
        self.parts.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a>{tail}</p>')

    def view(self, component: str, props: dict[str, Any], title: str = "") -> str:
        """A circuitsvis component (e.g. ``"ColoredTokensMulti"``) rendered from ``props``; returns its element id.

        Prefer the helpers in :mod:`emolens.report.views`, which build the props.
        """
        self.view_count += 1
        view_id = f"cv-{self.view_count}"
        if title:
            self.parts.append(f'<div class="cv-title">{html.escape(title)}</div>')
        self.parts.append(
            f'<div class="cv-view" id="{view_id}" data-component="{html.escape(component)}"></div>'
            f"<script>emolensView({script_json(view_id)},{script_json(component)},{script_json(props)});</script>"
        )
        return view_id

    def fragment(self, markup: str) -> None:
        """Markup built by emolens from escaped pieces (e.g. :func:`emolens.report.views.side_by_side`)."""
        self.parts.append(markup)

    def render(self) -> str:
        title = html.escape(self.title)
        current = ' class="current" aria-current="page"'
        links = "".join(
            f'<a href="{html.escape(href)}"{current if href == self.filename else ""}>{html.escape(label)}</a>'
            for label, href in self.nav
        )
        nav = f"<nav>{links}</nav>" if links else ""
        scripts = f"<script>{circuitsvis_bundle()}\n{VIEW_BOOT}</script>" if self.view_count else ""
        body = "\n".join(self.parts)
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="color-scheme" content="light dark"><title>{title}</title>'
            f"<style>{STYLE}</style>{scripts}</head><body>{nav}<h1>{title}</h1>\n{body}\n</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.render())
