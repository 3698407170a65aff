"""Choice scoring: two-column unembedding equals the full logits, batched equals unbatched; BT recovers scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.choice import choice_logits, choice_probability, first_hooked_layer, option_tokens, resid_prefix
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


def masked_steering(model, vecs, positions: list[int], layers: list[int]):
    """Per-batch hooks steering "happy" at ``positions`` of every prompt, as a batch mask."""

    def hooks_for(batch):
        mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
        mask[:, positions] = True
        return steering_hooks(model, vecs, "happy", 4.0, layers=layers, positions=mask)

    return hooks_for


def test_choice_logits_with_per_batch_hooks_match_unbatched(tiny_model, tiny_vectors):
    options = option_tokens(tiny_model)
    hooks_for = masked_steering(tiny_model, tiny_vectors, [2, 3], [1])
    steered = choice_logits(tiny_model, PROMPTS, options, batch_hooks=hooks_for)
    alone = []
    for prompt in PROMPTS:
        hooks = steering_hooks(tiny_model, tiny_vectors, "happy", 4.0, layers=[1], positions=[2, 3])
        with tiny_model.hooks(fwd_hooks=hooks):
            alone.append(full_logit_reference(tiny_model, prompt, options.ids))
    torch.testing.assert_close(steered, torch.stack(alone), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(steered, choice_logits(tiny_model, PROMPTS, options))


def test_a_residual_prefix_gives_the_same_steered_logits_as_the_full_forward(tiny_model, tiny_vectors):
    options = option_tokens(tiny_model)
    hooks_for = masked_steering(tiny_model, tiny_vectors, [1, 2], [1, 2])
    prefix = resid_prefix(tiny_model, PROMPTS, 1, token_budget=64)  # several batches
    assert len(prefix.planned) > 1
    full = choice_logits(tiny_model, PROMPTS, options, batch_hooks=hooks_for, token_budget=64)
    resumed = choice_logits(tiny_model, PROMPTS, options, batch_hooks=hooks_for, prefix=prefix)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, choice_logits(tiny_model, PROMPTS, options))
    low = steering_hooks(tiny_model, tiny_vectors, "happy", 4.0, layers=[0])
    with pytest.raises(ValueError, match="below the prefix layer 1"):
        choice_logits(tiny_model, PROMPTS, options, hooks=low, prefix=prefix)
    with pytest.raises(ValueError, match="other prompts"):
        choice_logits(tiny_model, PROMPTS[:2], options, prefix=prefix)


def test_first_hooked_layer_reads_block_indices_and_treats_embedding_hooks_as_zero():
    noop = lambda x, hook: None  # noqa: E731
    assert first_hooked_layer([]) is None
    assert first_hooked_layer([("blocks.7.hook_resid_post", noop), ("blocks.3.attn.hook_z", noop)]) == 3
    assert first_hooked_layer([("ln_final.hook_normalized", noop), ("blocks.12.hook_resid_pre", noop)]) == 12
    assert first_hooked_layer([("hook_embed", noop), ("blocks.5.hook_resid_post", noop)]) == 0


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
