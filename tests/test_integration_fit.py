"""Fitting and reading on a real packaged model (a small slice of the corpus, real forward passes)."""

from __future__ import annotations

import pytest
import torch

from emolens.corpus import load_neutral, load_stories
from emolens.fit import fit_emotion_vectors
from emolens.validation import validate

EMOTIONS = ["afraid", "calm", "furious", "grateful", "bored"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma_vectors(gemma):
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    return fit_emotion_vectors(gemma, stories=stories, neutral=load_neutral()[:60], emotions=EMOTIONS)


def test_fit_shapes_units_and_metadata(gemma, gemma_vectors) -> None:
    assert gemma_vectors.vectors.shape == (gemma.cfg.n_layers, len(EMOTIONS), gemma.cfg.d_model)
    assert torch.allclose(gemma_vectors.vectors.norm(dim=-1), torch.ones(gemma.cfg.n_layers, len(EMOTIONS)), atol=1e-5)
    assert gemma_vectors.default_layer == 11
    assert gemma_vectors.metadata["model"]["gguf_sha256"].startswith("a5fd3b62")
    assert all(n > 0 for n in gemma_vectors.resid_norms.tolist())


def test_held_out_stories_are_read_above_chance(gemma, gemma_vectors) -> None:
    """Two unseen stories per emotion: the best layer must beat chance (0.2) clearly."""
    result = validate(gemma_vectors, gemma)
    assert result.n_stories == 2 * len(EMOTIONS)
    best = max(acc.top1 for acc in result.per_layer)
    assert best >= 0.6, [acc.top1 for acc in result.per_layer]


def test_scenario_reading_separates_fear_from_calm(gemma, gemma_vectors) -> None:
    texts = [
        "I heard glass break downstairs and someone is walking around. I am hiding in the closet.",
        "We spent the afternoon on the porch, watching the slow river and drinking tea.",
    ]
    scores = gemma_vectors.score(gemma, texts)
    afraid, calm = EMOTIONS.index("afraid"), EMOTIONS.index("calm")
    assert scores[0, afraid] - scores[0, calm] > scores[1, afraid] - scores[1, calm]
