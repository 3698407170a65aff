"""Helpers for experiment pages: interactive circuitsvis views and side-by-side texts.

Each helper appends to a :class:`~emolens.report.page.Page`. The circuitsvis bundle is
inlined once per page however many views it holds; every token and text is passed as
escaped JSON (views) or escaped HTML (``side_by_side``), never as markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
from jaxtyping import Float
from torch import Tensor

from emolens.report.page import Page


def colored_tokens_multi(
    page: Page,
    tokens: Sequence[str],
    values_by_emotion: Mapping[str, Sequence[float] | Float[Tensor, " pos"] | np.ndarray],
    title: str = "",
) -> str:
    """Tokens coloured by a per-token reading; a button per emotion picks which reading colours them.

    ``tokens``: the text's string tokens (e.g. ``model.to_str_tokens(text)``), length ``pos``.
    ``values_by_emotion``: emotion name -> ``pos`` readings (e.g. columns of ``vecs.read(...)``).
    Returns the view's element id.
    """
    if not values_by_emotion:
        raise ValueError("values_by_emotion is empty; pass at least one emotion's per-token readings")
    columns: list[list[float]] = []
    for emotion, values in values_by_emotion.items():
        raw = values.tolist() if isinstance(values, Tensor | np.ndarray) else list(values)
        row: list[float] = [float(v) for v in raw]
        if len(row) != len(tokens):
            raise ValueError(f"{emotion!r} has {len(row)} values for {len(tokens)} tokens; pass one value per token")
        if not all(math.isfinite(v) for v in row):
            raise ValueError(f"{emotion!r} has NaN or infinite readings; check the readout before drawing it")
        columns.append(row)
    matrix = [list(per_token) for per_token in zip(*columns, strict=True)]  # pos x emotion
    props = {"tokens": [str(t) for t in tokens], "values": matrix, "labels": [str(e) for e in values_by_emotion]}
    return page.view("ColoredTokensMulti", props, title)


def attention_heads(
    page: Page,
    tokens: Sequence[str],
    patterns: Float[Tensor, "head dest src"] | np.ndarray,
    head_names: Sequence[str],
    title: str = "",
) -> str:
    """Attention patterns of several heads on one text (small multiples; click one to enlarge).

    ``patterns[h, i, j]``: attention of destination token ``i`` to source token ``j`` in
    head ``h`` (e.g. ``cache["pattern", layer][0, heads]``); ``head_names`` like ``"L5H2"``.
    Returns the view's element id.
    """
    array = patterns.detach().float().cpu().numpy() if isinstance(patterns, Tensor) else np.asarray(patterns, float)
    n_tokens = len(tokens)
    if array.ndim != 3 or array.shape[1:] != (n_tokens, n_tokens):
        raise ValueError(f"patterns must be head x {n_tokens} x {n_tokens} for {n_tokens} tokens, got {array.shape}")
    if len(head_names) != array.shape[0]:
        raise ValueError(f"{len(head_names)} head names for {array.shape[0]} heads; name every head")
    if not np.isfinite(array).all():
        raise ValueError("attention patterns contain NaN or infinity")
    props = {
        "attention": array.round(4).tolist(),
        "tokens": [str(t) for t in tokens],
        "attentionHeadNames": [str(n) for n in head_names],
        "maskUpperTri": True,
    }
    return page.view("AttentionHeads", props, title)


def side_by_side(page: Page, left_title: str, left_text: str, right_title: str, right_text: str) -> None:
    """Two texts in two columns (e.g. an unsteered and a steered generation); all text escaped."""
    columns = "".join(
        f"<div><h4>{html.escape(title)}</h4><pre>{html.escape(text)}</pre></div>"
        for title, text in ((left_title, left_text), (right_title, right_text))
    )
    page.fragment(f'<div class="pair">{columns}</div>')


def readings_by_emotion(
    readings: Float[Tensor, "pos emotion"], emotions: Sequence[str], chosen: Sequence[str]
) -> dict[str, list[float]]:
    """Columns of ``readings`` (e.g. from ``vecs.read``) for the ``chosen`` emotions, ready for a view."""
    if readings.shape[1] != len(emotions):
        raise ValueError(f"readings have {readings.shape[1]} emotion columns for {len(emotions)} emotion names")
    return {e: readings[:, list(emotions).index(e)].tolist() for e in chosen if e in emotions}


__all__ = ["attention_heads", "colored_tokens_multi", "readings_by_emotion", "side_by_side"]
