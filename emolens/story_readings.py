"""Per-token readings of a few held-out stories, stored with the validation results for the report's token views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from emolens.corpus import Story
from emolens.vectors import EmotionVectors

N_EXAMPLES = 3
N_SHOWN = 6  # emotions shown per story: its own and the strongest others


def story_readings(
    model: HookedTransformer, vectors: EmotionVectors, stories: Sequence[Story], layer: int | None = None
) -> list[dict[str, Any]]:
    """Up to ``N_EXAMPLES`` stories of different emotions: string tokens and per-token readings at ``layer``.

    Each story keeps the readings (rounded, BOS dropped) of its true emotion plus the
    emotions with the highest mean reading over its tokens, ``N_SHOWN`` in all.
    """
    chosen: list[Story] = []
    for story in stories:
        if story.emotion in vectors.emotions and all(s.emotion != story.emotion for s in chosen):
            chosen.append(story)
        if len(chosen) == N_EXAMPLES:
            break
    chosen_layer = vectors.layers[vectors.layer_index(layer)]
    examples = []
    for story in chosen:
        readings = vectors.read(model, story.text, layer=chosen_layer)  # pos x emotion, BOS first
        tokens = [str(t) for t in model.to_str_tokens(model.to_tokens(story.text)[0])]
        if len(tokens) != readings.shape[0]:
            raise ValueError(f"{len(tokens)} tokens but {readings.shape[0]} readings; tokenization differs from read()")
        skip = 1 if model.cfg.default_prepend_bos else 0
        readings, tokens = readings[skip:], tokens[skip:]
        order = torch.argsort(readings.mean(dim=0), descending=True).tolist()
        truth = vectors.emotions.index(story.emotion)
        shown = [truth, *[i for i in order if i != truth][: N_SHOWN - 1]]
        examples.append(
            {
                "emotion": story.emotion,
                "layer": chosen_layer,
                "tokens": tokens,
                "readings": {vectors.emotions[i]: [round(float(v), 3) for v in readings[:, i]] for i in shown},
            }
        )
    return examples
