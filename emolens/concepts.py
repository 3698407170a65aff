"""The 171 emotion concepts of the reference study, and human valence/arousal/dominance norms.

Concept order is the study's (alphabetical, ``emolens/data/emotions171.txt``) and is the
order of the ``emotion`` axis of every tensor in emolens. Cluster labels are not assigned
by hand: they are computed from fitted vectors (see :mod:`emolens.validation`).
"""

from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@cache
def emotions() -> tuple[str, ...]:
    """The 171 concepts, in the reference order."""
    text = files("emolens.data").joinpath("emotions171.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def check_emotion(name: str, known: tuple[str, ...] | list[str] | None = None) -> str:
    """``name`` if it is a known concept; otherwise a ValueError naming the closest ones."""
    pool = tuple(known) if known is not None else emotions()
    if name in pool:
        return name
    close = difflib.get_close_matches(name.lower().strip(), pool, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else "; see emolens.concepts.emotions()"
    raise ValueError(f"unknown emotion {name!r}{hint}")


def emotion_index(name: str, known: tuple[str, ...] | list[str] | None = None) -> int:
    """Position of ``name`` on the emotion axis (of ``known``, default the 171 concepts)."""
    pool = tuple(known) if known is not None else emotions()
    return pool.index(check_emotion(name, pool))


@dataclass(frozen=True)
class Norm:
    """Warriner et al. (2013) ratings of the word a concept was mapped to (1-9 scales)."""

    emotion: str
    source_word: str
    mapping: str  # "exact", a named mapping kind, or "none"
    valence: float | None
    arousal: float | None
    dominance: float | None


@cache
def norms() -> dict[str, Norm]:
    """Human ratings per concept (see docs/data.md for coverage and mapping kinds)."""
    text = files("emolens.data").joinpath("norms.csv").read_text()
    rows = csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#"))))

    def number(value: str | None) -> float | None:
        return float(value) if value else None

    return {
        row["emotion"]: Norm(
            emotion=row["emotion"],
            source_word=row["source_word"],
            mapping=row["mapping"],
            valence=number(row["valence"]),
            arousal=number(row["arousal"]),
            dominance=number(row["dominance"]),
        )
        for row in rows
    }
