"""Benchmark of choice scoring: two option logits per prompt vs a body-only forward of the same batches.

The preference prompts of the ``cpu`` profile (384 A/B prompts of the 64 activities) are
scored with :func:`emolens.choice.choice_logits` (blocks, ``ln_final`` and two columns of
``W_U`` at each prompt's last token) and, on the same length-sorted right-padded batches,
with ``model(tokens, stop_at_layer=n_layers)`` (the blocks alone). Runs alternate so drift
hits both alike; the minimum of ``repeats`` is kept. The target is a ratio <= 1.2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class ChoiceSpeed:
    model: str
    prompts: int
    tokens: int
    body_s: float
    choice_s: float
    ratio: float  # choice / body; the target is <= 1.2


def bench_choice(name: str, repeats: int = 3) -> ChoiceSpeed:
    import torch

    from emolens.choice import choice_logits, option_tokens
    from emolens.experiments.preferences import SIZES, build_prompts, load_activities, pair_design
    from emolens.extract import batches
    from emolens.models import load_model

    model = load_model(name, device="cpu")
    activities = load_activities(SIZES["cpu"]["per_category"])
    prompts = build_prompts(model, activities, pair_design(len(activities), SIZES["cpu"]["offsets"], seed=0)).texts
    options = option_tokens(model)
    planned = batches(model, prompts, window_start=0)
    n_tokens = sum(b.tokens.numel() for b in planned)

    def body() -> None:
        with torch.inference_mode():
            for batch in planned:
                model(batch.tokens, stop_at_layer=model.cfg.n_layers)

    def choice() -> None:
        choice_logits(model, prompts, options)

    timings: dict[str, list[float]] = {"body": [], "choice": []}
    for _ in range(repeats):
        for label, run in (("body", body), ("choice", choice)):
            started = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - started)
    body_s, choice_s = min(timings["body"]), min(timings["choice"])
    return ChoiceSpeed(name, len(prompts), n_tokens, round(body_s, 3), round(choice_s, 3), round(choice_s / body_s, 3))
