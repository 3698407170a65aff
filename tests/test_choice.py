"""Choice scoring: two-column unembedding equals the full logits, batched equals unbatched; BT recovers scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.choice import choice_logits, choice_probability, option_tokens
from emolens.ranking import bradley_terry, elo_intervals, elo_scores
from emolens.steer import steering_hooks

PROMPTS = [
    "Would you prefer (A) tea or (B) coffee? (",
    "Pick one. (",
    "A much longer question that goes on and on about two options, the first and the second: (",
    "Short (",
    "Another prompt of middling length: (",
]


def full_logit_reference(model, prompt: str, ids: list[int]) -> torch.Tensor:
    """The two options' logits from the model's full-vocabulary output, one prompt alone."""
    tokens = model.to_tokens(prompt)
    with torch.inference_mode():
        logits = model(tokens)
    return logits[0, -1, ids]


def test_choice_logits_equal_full_logits_unbatched_with_mixed_lengths(tiny_model):
    options = option_tokens(tiny_model)
    lengths = {len(tiny_model.to_tokens(p)[0]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every row of a batch but the longest is padded
    batched = choice_logits(tiny_model, PROMPTS, options)
    reference = torch.stack([full_logit_reference(tiny_model, p, options.ids) for p in PROMPTS])
    torch.testing.assert_close(batched, reference, atol=1e-4, rtol=1e-4)
    one_by_one = torch.cat([choice_logits(tiny_model, [p], options) for p in PROMPTS])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    assert torch.all((choice_probability(batched) > 0) & (choice_probability(batched) < 1))


def test_choice_logits_with_per_batch_hooks_match_unbatched(tiny_model, tiny_vectors):
    options = option_tokens(tiny_model)
    positions = [[2, 3] for _ in PROMPTS]

    def hooks_for(batch):
        mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
        for row, index in enumerate(batch.indices):
            mask[row, positions[index]] = True
        return steering_hooks(tiny_model, tiny_vectors, "happy", 4.0, layers=[1], positions=mask)

    steered = choice_logits(tiny_model, PROMPTS, options, batch_hooks=hooks_for)
    alone = []
    for prompt in PROMPTS:
        hooks = steering_hooks(tiny_model, tiny_vectors, "happy", 4.0, layers=[1], positions=[2, 3])
        with tiny_model.hooks(fwd_hooks=hooks):
            alone.append(full_logit_reference(tiny_model, prompt, options.ids))
    torch.testing.assert_close(steered, torch.stack(alone), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(steered, choice_logits(tiny_model, PROMPTS, options))


def test_option_tokens_rejects_multi_token_options(tiny_model):
    with pytest.raises(ValueError, match="one-token"):
        option_tokens(tiny_model, "AB", "B")
    with pytest.raises(ValueError, match="same token"):
        option_tokens(tiny_model, "A", "A")


def simulated(true_elo: np.ndarray, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = true_elo.size
    first = rng.integers(0, n, pairs)
    second = (first + rng.integers(1, n, pairs)) % n
    p = 1 / (1 + 10 ** (-(true_elo[first] - true_elo[second]) / 400))
    return first, second, (rng.random(pairs) < p).astype(float)


def test_bradley_terry_recovers_known_scores_from_simulated_choices():
    true_elo = np.linspace(1200, 1800, 16)
    first, second, won = simulated(true_elo, 6000, seed=1)
    fitted = elo_scores(first, second, won, 16)
    assert abs(fitted.mean() - 1500) < 1e-6
    assert np.max(np.abs(fitted - true_elo)) < 60
    assert np.corrcoef(fitted, true_elo)[0, 1] > 0.98
    intervals = elo_intervals(first, second, won, 16, samples=100)
    inside = sum(e.low <= t <= e.high for e, t in zip(intervals, true_elo, strict=True))
    assert inside >= 12


def test_bradley_terry_soft_labels_are_exact_and_validation():
    strengths = np.array([-1.0, 0.0, 1.0])
    first, second = np.array([0, 0, 1]), np.array([1, 2, 2])
    p = 1 / (1 + np.exp(-(strengths[first] - strengths[second])))
    np.testing.assert_allclose(bradley_terry(first, second, p, 3), strengths, atol=1e-2)
    with pytest.raises(ValueError, match="itself"):
        bradley_terry(np.array([0]), np.array([0]), np.array([0.5]), 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bradley_terry(np.array([0]), np.array([1]), np.array([1.5]), 2)
