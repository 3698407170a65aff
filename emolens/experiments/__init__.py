"""The experiments behind ``emolens run``, in report order, and how the pipeline finds them.

Each module ``emolens.experiments.NAME`` exposes ``run(model, vecs, profile, seed) -> result``
(with ``to_dict()``), ``render(page, data)`` and ``main(argv)``; optionally
``headlines(data) -> [(measure, ours, study)]`` for the index page. The code lives inside the
package so an installed (non-editable) emolens has it; the top-level ``experiments/NAME.py``
files are four-line runners for ``python -m experiments.NAME`` in a checkout.

To plug an experiment into ``emolens run``, add its name to ``EXPERIMENTS`` (one line).
"""

from __future__ import annotations

import difflib
from importlib import import_module
from types import ModuleType

EXPERIMENTS: tuple[str, ...] = (
    # form: what the directions encode and where
    "geometry",
    "layers",
    "scenarios",
    "intensity",
    "speakers",
    "corpus_scan",
    # act: where the directions change behaviour
    "feels",
    "ablation",
    "attribution",
    "preferences",
    "dilemmas",
)

PROFILES: dict[str, tuple[str, ...]] = {
    "quick": EXPERIMENTS,  # seconds on the tiny model, about a minute each on gemma-3-270m
    "cpu": EXPERIMENTS,  # what fits 2 cores in a few minutes each
    "full": EXPERIMENTS,  # the study's scale (a GPU)
}


def check_profile(profile: str) -> str:
    """``profile`` itself, or a one-line error naming the profiles."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def check_experiment(name: str) -> str:
    """``name`` itself when it is a registered experiment, else a one-line error naming the closest ones."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=3) or list(EXPERIMENTS)
        raise ValueError(f"unknown experiment {name!r}; did you mean {', '.join(close)}?")
    return name


def load_experiment(name: str) -> ModuleType:
    """The module of a registered experiment (imported on first use)."""
    return import_module(f"emolens.experiments.{check_experiment(name)}")
