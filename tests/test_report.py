"""Report pages and view helpers: escaping, one inline bundle per page, no network references."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from emolens.report import Page, attention_heads, colored_tokens_multi, readings_by_emotion, side_by_side
from emolens.report.page import circuitsvis_bundle


def test_page_escapes_text(tmp_path: Path) -> None:
    page = Page("<b>title</b>")
    page.paragraph('<script>alert("x")</script>')
    page.table(["<h>"], [["a & b"]])
    html = page.write(tmp_path / "p.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "a &amp; b" in html and "<b>title" not in html
    assert "<script" not in html  # no view, no bundle


def test_views_inline_the_bundle_once_and_escape_tokens(tmp_path: Path) -> None:
    page = Page("views", nav=[("Overview", "index.html"), ("Views", "views.html")], filename="views.html")
    tokens = ["<bos>", "</script><img src=x>", " calm", " & more"]
    colored_tokens_multi(page, tokens, {"calm": [0.0, 1.0, 2.0, -1.0], "afraid": torch.tensor([1.0, 0.5, 0.0, 2.0])})
    attention_heads(page, tokens, torch.softmax(torch.randn(2, 4, 4), dim=-1), ["L0H0", "L0H1"], title="heads <x>")
    side_by_side(page, "unsteered", "a <b>plain</b> reply", "steered", "an <i>afraid</i> reply")
    html = page.write(tmp_path / "views.html").read_text()
    bundle_marker = circuitsvis_bundle()[:60]
    assert html.count(bundle_marker) == 1  # inlined once for two views
    assert html.count('class="cv-view"') == 2
    assert "</script><img" not in html and "\\u003c/script\\u003e\\u003cimg src=x\\u003e" in html
    assert "&lt;b&gt;plain&lt;/b&gt;" in html and "heads &lt;x&gt;" in html
    assert '<a href="views.html" class="current" aria-current="page">Views</a>' in html
    # three scripts (bundle, two views); nothing inside them can end a script early
    assert html.count("</script>") == 3
    assert "</script" not in circuitsvis_bundle() and "<!--" not in circuitsvis_bundle()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing fetched from a network


def test_views_reject_bad_input() -> None:
    page = Page("bad")
    with pytest.raises(ValueError, match="one value per token"):
        colored_tokens_multi(page, ["a", "b"], {"calm": [1.0]})
    with pytest.raises(ValueError, match="NaN"):
        colored_tokens_multi(page, ["a"], {"calm": [float("nan")]})
    with pytest.raises(ValueError, match="head x 2 x 2"):
        attention_heads(page, ["a", "b"], torch.ones(1, 3, 3), ["h"])
    with pytest.raises(ValueError, match="name every head"):
        attention_heads(page, ["a", "b"], torch.ones(2, 2, 2), ["h"])
    with pytest.raises(ValueError, match="at least one"):
        colored_tokens_multi(page, ["a"], {})


def test_readings_by_emotion_picks_columns() -> None:
    readings = torch.arange(6.0).reshape(3, 2)
    assert readings_by_emotion(readings, ["calm", "afraid"], ["afraid", "joyful"]) == {"afraid": [1.0, 3.0, 5.0]}
