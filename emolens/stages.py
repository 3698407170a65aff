"""The stages of ``emolens run`` after the fit: what each computes, and the one pass two of them share.

A :class:`Stage` is a name, the module whose source enters its key, and a ``compute``
callable returning the JSON-ready result. :mod:`emolens.pipeline` decides which stages
run (their keys) and saves what they return.

The validation stage and the corpus scan both read the held-out stories (342 on a full
fit, about 90 s a pass for gemma-3-270m on 2 cores). When both are about to run,
:class:`SharedStoryPass` lets validation's pass, which reads every fitted layer, also
collect the scan's per-token readings at its layer; the scan then reads only its neutral
texts. A scan that runs alone (validation reused, or ``--only corpus_scan``) reads its
stories itself, with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from transformer_lens import HookedTransformer

from emolens import validation as validation_module
from emolens.corpus import Story, load_stories
from emolens.experiments import corpus_scan
from emolens.story_readings import story_readings
from emolens.vectors import EmotionVectors


@dataclass
class Stage:
    """One resumable step: its results file is ``results/NAME.json``."""

    name: str
    module: ModuleType  # the code whose source enters the key
    compute: Callable[[], dict[str, Any]]
    key: str = ""
    previous: dict[str, Any] = field(default_factory=dict)  # the _stage block of the last results file


class SharedStoryPass:
    """Validation's pass over the held-out stories, also feeding the corpus scan when both run."""

    def __init__(self, model: HookedTransformer, vectors: EmotionVectors, profile: str, held_out: list[Story]) -> None:
        self.model, self.vectors, self.profile, self.held_out = model, vectors, profile, held_out
        self.scan_reducer: corpus_scan.TokenReadingsReducer | None = None
        self.filled = False

    def plan(self, pending: Sequence[str]) -> None:
        """Share the pass if validation and the corpus scan are both among the ``pending`` stages."""
        if "validation" in pending and "corpus_scan" in pending:
            texts = [s.text for s in self.held_out if s.emotion in self.vectors.emotions]  # as validate() reads
            layers = list(self.vectors.layers)
            self.scan_reducer = corpus_scan.story_reducer(self.model, self.vectors, self.profile, texts, layers)

    def validation(self) -> dict[str, Any]:
        """Held-out accuracy per layer, plus per-token readings of a few held-out stories for the report."""
        also = [self.scan_reducer] if self.scan_reducer else []
        result = validation_module.validate(self.vectors, self.model, self.held_out, also=also)
        self.filled = bool(also)
        examples = story_readings(self.model, self.vectors, self.held_out)
        return {**result.to_dict(), "examples": examples}

    def scan_arguments(self) -> dict[str, Any]:
        """``story_readings`` for the corpus scan once validation's pass has filled them; else nothing."""
        if self.scan_reducer is None or not self.filled:
            return {}
        return {"story_readings": self.scan_reducer.readings()}


def run_stages(
    model: HookedTransformer,
    vectors: EmotionVectors,
    modules: Sequence[tuple[str, ModuleType]],
    profile: str,
    seed: int,
    held_out: list[Story] | None,
) -> tuple[list[Stage], SharedStoryPass]:
    """The validation stage and one stage per experiment module, in order, with their shared pass."""
    stories = held_out if held_out is not None else load_stories(split="validation")
    shared = SharedStoryPass(model, vectors, profile, stories)
    stages = [Stage("validation", validation_module, shared.validation)]
    for name, module in modules:
        stages.append(Stage(name, module, experiment_call(module, model, vectors, profile, seed, shared)))
    return stages, shared


def experiment_call(
    module: ModuleType,
    model: HookedTransformer,
    vectors: EmotionVectors,
    profile: str,
    seed: int,
    shared: SharedStoryPass,
) -> Callable[[], dict[str, Any]]:
    """The compute of one experiment's stage: ``module.run`` on the run's model and vectors."""

    def call() -> dict[str, Any]:
        extra = shared.scan_arguments() if module is corpus_scan else {}
        result = module.run(model, vectors, profile=profile, seed=seed, **extra)
        return dict(result.to_dict())

    return call
