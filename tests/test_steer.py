"""Steering and ablation on the tiny model: exact arithmetic, positions, KV-cache generation, cleanup, bad input."""

from __future__ import annotations

import pytest
import torch

import emolens
from emolens.corpus import load_neutral
from emolens.extract import resid_hook
from emolens.models import tiny_random_model
from emolens.steer import TopPCs, ablation_hooks, neutral_reference, steering_hooks
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "joyful"]
PROMPT = "The package arrived on Tuesday and she"


@pytest.fixture(scope="module")
def vecs(tiny_vectors) -> EmotionVectors:
    return tiny_vectors


def resid_at(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=resid_hook(layer))
    return cache[resid_hook(layer)]


def test_alpha_zero_is_bit_identical(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    plain = tiny_model(tokens)
    with emolens.steer(tiny_model, vecs, "calm", alpha=0.0, layers="all"):
        steered = tiny_model(tokens)
    assert torch.equal(plain, steered)


def test_steer_adds_scaled_direction_at_each_layer(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    layer = 1
    before = resid_at(tiny_model, tokens, layer)
    with emolens.steer(tiny_model, vecs, "afraid", alpha=0.3, layers=[layer]):
        after = resid_at(tiny_model, tokens, layer)
    expected = 0.3 * vecs.resid_norm(layer) * vecs.direction("afraid", layer)
    torch.testing.assert_close(after - before, expected.expand_as(before), atol=1e-5, rtol=1e-5)


def test_mix_and_raw_vector_and_random_control(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    layer = 0
    base = resid_at(tiny_model, tokens, layer)
    with emolens.steer(tiny_model, vecs, {"calm": 1.0, "joyful": -1.0}, alpha=0.5, layers=layer):
        mixed = resid_at(tiny_model, tokens, layer) - base
    expected = 0.5 * vecs.resid_norm(layer) * (vecs.direction("calm", layer) - vecs.direction("joyful", layer))
    torch.testing.assert_close(mixed[0, 0], expected, atol=1e-5, rtol=1e-5)
    raw = torch.randn(tiny_model.cfg.d_model) * 7
    with emolens.steer(tiny_model, vecs, raw, alpha=0.2, layers=layer):
        shifted = resid_at(tiny_model, tokens, layer) - base
    torch.testing.assert_close(shifted[0, 0].norm(), torch.tensor(0.2 * vecs.resid_norm(layer)), atol=1e-4, rtol=1e-4)
    with emolens.steer(tiny_model, vecs, "calm", alpha=0.2, layers=layer, control="random", seed=3):
        control = resid_at(tiny_model, tokens, layer) - base
    torch.testing.assert_close(control[0, 0].norm(), shifted[0, 0].norm(), atol=1e-4, rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(control[0, 0], vecs.direction("calm", layer), dim=0)
    assert abs(float(cosine)) < 0.9


def test_hooks_removed_after_exception(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    plain = tiny_model(tokens)
    with pytest.raises(RuntimeError, match="boom"), emolens.steer(tiny_model, vecs, "calm", alpha=5.0, layers="all"):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), emolens.ablate(tiny_model, vecs, ["calm"], layers="all"):
        raise RuntimeError("boom")
    assert torch.equal(tiny_model(tokens), plain)
    assert not any(hook.fwd_hooks for hook in tiny_model.hook_dict.values())


def test_positions_prompt_last_and_indices(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    n = tokens.shape[1]
    layer = 1
    base = resid_at(tiny_model, tokens, layer)
    for positions, touched in [("last", [n - 1]), ([2, 4], [2, 4]), ("prompt", list(range(n))), ("generated", [])]:
        with emolens.steer(tiny_model, vecs, "calm", alpha=1.0, layers=layer, positions=positions):
            moved = (resid_at(tiny_model, tokens, layer) - base)[0].norm(dim=-1) > 1e-4
        assert moved.nonzero().flatten().tolist() == touched, positions
    mask = torch.zeros(n, dtype=torch.bool)
    mask[1] = True
    with emolens.steer(tiny_model, vecs, "calm", alpha=1.0, layers=layer, positions=mask):
        moved = (resid_at(tiny_model, tokens, layer) - base)[0].norm(dim=-1) > 1e-4
    assert moved.nonzero().flatten().tolist() == [1]


def test_generated_positions_with_and_without_kv_cache(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    plain_prompt_logits = tiny_model(tokens)
    with emolens.steer(tiny_model, vecs, "afraid", alpha=8.0, layers="all", positions="generated"):
        prompt_logits = tiny_model(tokens)
    assert torch.equal(prompt_logits, plain_prompt_logits)

    def generate(use_cache: bool, steer: bool) -> torch.Tensor:
        kwargs = {"max_new_tokens": 6, "do_sample": False, "verbose": False, "use_past_kv_cache": use_cache}
        if not steer:
            return tiny_model.generate(tokens, **kwargs)
        with emolens.steer(tiny_model, vecs, "afraid", alpha=8.0, layers="all", positions="generated"):
            return tiny_model.generate(tokens, **kwargs)

    cached, uncached, plain = generate(True, True), generate(False, True), generate(True, False)
    assert torch.equal(cached, uncached)  # "generated" means the same positions with and without the cache
    assert not torch.equal(cached, plain)  # and it does steer them
    assert torch.equal(cached[:, : tokens.shape[1]], tokens)


def test_ablation_zeroes_projection_and_is_idempotent(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    layer = 1
    with emolens.ablate(tiny_model, vecs, ["calm", "afraid"], layers=[layer]):
        once = resid_at(tiny_model, tokens, layer)
    for emotion in ("calm", "afraid"):
        assert float((once @ vecs.direction(emotion, layer)).abs().max()) < 1e-4
    hooks = ablation_hooks(tiny_model, vecs, ["calm", "afraid"], layers=[layer])
    with tiny_model.hooks(fwd_hooks=hooks + ablation_hooks(tiny_model, vecs, ["calm", "afraid"], layers=[layer])):
        twice = resid_at(tiny_model, tokens, layer)
    torch.testing.assert_close(once, twice, atol=1e-5, rtol=1e-5)


def test_mean_ablation_and_top_pcs(tiny_model, vecs):
    tokens = tiny_model.to_tokens(PROMPT)
    layer = 2
    reference = neutral_reference(tiny_model, vecs, load_neutral()[:3])
    direction = vecs.direction("joyful", layer)
    with emolens.ablate(tiny_model, vecs, "joyful", layers=[layer], mode="mean", reference=reference):
        ablated = resid_at(tiny_model, tokens, layer)
    target = float(reference[vecs.layer_index(layer)] @ direction)
    torch.testing.assert_close(ablated @ direction, torch.full(ablated.shape[:2], target), atol=1e-4, rtol=1e-4)
    with emolens.ablate(tiny_model, vecs, TopPCs(2), layers=[layer]):
        flat = resid_at(tiny_model, tokens, layer)
    with emolens.ablate(tiny_model, vecs, TopPCs(2), layers=[layer], control="random"):
        control = resid_at(tiny_model, tokens, layer)
    assert not torch.allclose(flat, control)


def test_bad_input_errors(tiny_model, vecs):
    with pytest.raises(ValueError, match="finite"):
        steering_hooks(tiny_model, vecs, "calm", alpha=float("nan"))
    with pytest.raises(ValueError, match="calm"):
        steering_hooks(tiny_model, vecs, "clam", alpha=0.1)
    with pytest.raises(ValueError, match=r"not fitted"):
        steering_hooks(tiny_model, vecs, "calm", alpha=0.1, layers=[99])
    with pytest.raises(ValueError, match="positions"):
        steering_hooks(tiny_model, vecs, "calm", alpha=0.1, positions="middle")
    with pytest.raises(ValueError, match="alpha is required"):
        steering_hooks(tiny_model, vecs, "calm")
    with pytest.raises(ValueError, match="reference"):
        ablation_hooks(tiny_model, vecs, "calm", mode="mean")
    other = tiny_random_model(seed=1, n_layers=2, d_model=32)
    with pytest.raises(ValueError, match="another model"):
        steering_hooks(other, vecs, "calm", alpha=0.1)
