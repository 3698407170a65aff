"""The fused attention path equals TransformerLens' hooked path: logits, every hook, generation."""

from __future__ import annotations

from collections.abc import Callable

import einops
import pytest
import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.hook_points import HookPoint

import emolens.fast_forward as fast_forward
from emolens.fast_forward import (
    disable_fast_attention,
    enable_fast_attention,
    fast_attention_enabled,
    store_weights_for_linear,
)
from emolens.models import tiny_random_model

TEXTS = [
    "The storm had passed and she finally felt calm again.",
    "He slammed the door.",
    "Nobody came to the party, and the cake sat untouched on the table all night long.",
]
PATTERN_HOOKS = ("hook_attn_scores", "hook_pattern")
# Grouped-query heads (as SmolLM2) and sliding-window layers (as Gemma 3) on top of the default.
VARIANTS = {"default": {}, "gqa": {"n_key_value_heads": 2}, "local": {"local_window": 7}}


def pair(**kwargs: object) -> tuple[HookedTransformer, HookedTransformer]:
    """The same random model twice: TransformerLens' path and the fused one."""
    slow = tiny_random_model(fast_attention=False, **kwargs)  # type: ignore[arg-type]
    fast = tiny_random_model(fast_attention=True, **kwargs)  # type: ignore[arg-type]
    assert not fast_attention_enabled(slow) and fast_attention_enabled(fast)
    return slow, fast


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts fused attention calls, so each test knows which path ran."""
    calls: list[int] = []
    original = fast_forward._sdpa

    def counted(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fast_forward, "_sdpa", counted)
    return calls


def padded_batch(model: HookedTransformer) -> Tensor:
    return model.to_tokens(TEXTS, padding_side="right")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_without_hooks(variant: str, sdpa_calls: list[int]) -> None:
    slow, fast = pair(**VARIANTS[variant])
    tokens = padded_batch(slow)
    with torch.inference_mode():
        expected, got = slow(tokens), fast(tokens)
    assert len(sdpa_calls) == fast.cfg.n_layers
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_other_hook_sees_the_same_activations(variant: str, sdpa_calls: list[int]) -> None:
    slow, fast = pair(**VARIANTS[variant])
    tokens = padded_batch(slow)
    with torch.inference_mode():
        _, cache = slow.run_with_cache(tokens)
        seen: dict[str, Tensor] = {}

        def record(act: Tensor, hook: HookPoint) -> None:
            seen[hook.name] = act.clone()  # type: ignore[index]

        names = [n for n in cache if not n.endswith(PATTERN_HOOKS)]  # every hook this config runs
        fast.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in names])
    assert len(sdpa_calls) == fast.cfg.n_layers  # the recording hooks kept the fused path
    assert set(seen) == set(names) and {f"blocks.0.attn.hook_{h}" for h in "qkvz"} <= set(seen)
    for name in names:
        torch.testing.assert_close(seen[name], cache[name], atol=1e-5, rtol=1e-5, msg=name)


def test_editing_hooks_act_identically(sdpa_calls: list[int]) -> None:
    """An edit on hook_z / hook_v / resid changes both paths the same way."""
    slow, fast = pair(n_key_value_heads=2)
    tokens = padded_batch(slow)

    def zero_head(act: Tensor, hook: HookPoint) -> Tensor:
        act = act.clone()
        act[:, :, 1] = 0
        return act

    hooks: list[tuple[str, Callable[..., Tensor]]] = [
        ("blocks.1.attn.hook_z", zero_head),
        ("blocks.0.attn.hook_v", zero_head),
        ("blocks.2.hook_resid_pre", lambda act, hook: act * 1.5),
    ]
    with torch.inference_mode():
        expected = slow.run_with_hooks(tokens, fwd_hooks=hooks)
        got = fast.run_with_hooks(tokens, fwd_hooks=hooks)
        plain = fast(tokens)
    assert sdpa_calls
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the edits did something


@pytest.mark.parametrize("point", PATTERN_HOOKS)
def test_pattern_hooks_fall_back_and_can_edit(point: str, sdpa_calls: list[int]) -> None:
    slow, fast = pair(n_key_value_heads=2)
    tokens = padded_batch(slow)
    layer = 1

    def uniform(act: Tensor, hook: HookPoint) -> Tensor:
        return torch.zeros_like(act) if point == "hook_attn_scores" else act * 0.5

    name = f"blocks.{layer}.attn.{point}"
    with torch.inference_mode():
        expected = slow.run_with_hooks(tokens, fwd_hooks=[(name, uniform)])
        got = fast.run_with_hooks(tokens, fwd_hooks=[(name, uniform)])
    assert len(sdpa_calls) == fast.cfg.n_layers - 1  # only the hooked layer fell back
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_run_with_cache_is_the_hooked_path(sdpa_calls: list[int]) -> None:
    slow, fast = pair()
    tokens = padded_batch(slow)
    with torch.inference_mode():
        _, expected = slow.run_with_cache(tokens)
        _, got = fast.run_with_cache(tokens)
    assert not sdpa_calls
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padding_attention_mask(variant: str, sdpa_calls: list[int]) -> None:
    """Padding masks (with fully masked query rows on pad positions) match TransformerLens."""
    slow, fast = pair(**VARIANTS[variant])
    tokens = slow.to_tokens(TEXTS, padding_side="left")
    mask = (tokens != slow.tokenizer.pad_token_id).long()  # type: ignore[union-attr]
    with torch.inference_mode():
        expected = slow(tokens, attention_mask=mask)
        got = fast(tokens, attention_mask=mask)
    assert sdpa_calls
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_generation(variant: str, sdpa_calls: list[int]) -> None:
    slow, fast = pair(**VARIANTS[variant])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "verbose": False, "use_past_kv_cache": True}
    expected = slow.generate("Once upon a time", **kwargs)
    got = fast.generate("Once upon a time", **kwargs)
    assert len(sdpa_calls) >= 12 * fast.cfg.n_layers
    assert got == expected
    with torch.inference_mode():  # and the logits of a cached step, not only the argmax
        tokens = fast.to_tokens("Once upon a time there")
        full = fast(tokens)[:, -1]
        cache = TransformerLensKeyValueCache.init_cache(fast.cfg, fast.cfg.device, 1)
        fast(tokens[:, :-1], past_kv_cache=cache)
        stepped = fast(tokens[:, -1:], past_kv_cache=cache)[:, -1]
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


def test_steering_generation_with_position_tracker(sdpa_calls: list[int]) -> None:
    """emolens' generation hook on blocks.0.attn.hook_attn_scores: layer 0 falls back, rest fused."""
    from emolens.positions import PositionTracker
    from emolens.steer import masked_hooks

    slow, fast = pair()
    outputs = []
    for model in (slow, fast):
        tracker = PositionTracker("generated")
        edit = {1: lambda resid: resid + 3.0}
        with model.hooks(fwd_hooks=masked_hooks(tracker, edit)):
            outputs.append(model.generate("Once upon", max_new_tokens=10, do_sample=False, verbose=False))
        assert tracker.prompt_length is not None
    assert sdpa_calls and len(sdpa_calls) % (fast.cfg.n_layers - 1) == 0
    assert outputs[0] == outputs[1]


def test_enable_and_disable_round_trip() -> None:
    model = tiny_random_model()
    tokens = padded_batch(model)
    with torch.inference_mode():
        before = model(tokens)
        assert enable_fast_attention(model) == model.cfg.n_layers
        assert enable_fast_attention(model) == 0  # idempotent
        fused = model(tokens)
        disable_fast_attention(model)
        after = model(tokens)
    assert not fast_attention_enabled(model)
    assert torch.equal(before, after)
    torch.testing.assert_close(fused, before, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == set(tiny_random_model().state_dict())


def test_gradients_flow_through_the_fused_path() -> None:
    slow, fast = pair(n_key_value_heads=2)
    tokens = padded_batch(slow)
    grads = []
    for model in (slow, fast):
        model.zero_grad()
        model(tokens).logsumexp(-1).mean().backward()
        grads.append(model.blocks[0].attn.W_Q.grad.clone())  # type: ignore[union-attr]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weight_layout_gives_identical_logits_without_per_forward_copies(variant: str) -> None:
    model = tiny_random_model(fast_attention=False, gated_mlp=True, **VARIANTS[variant])  # type: ignore[arg-type]
    assert store_weights_for_linear(model) == 0  # the load path already laid every weight out
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    key = attn._W_K if variant == "gqa" else attn.W_K
    copies = {  # the expressions TransformerLens evaluates per forward: each must be a view now
        "W_U": model.unembed.W_U.T.contiguous(),
        "W_gate": mlp.W_gate.T.contiguous(),
        "W_out": mlp.W_out.T.contiguous(),
        "W_Q": einops.rearrange(attn.W_Q, "head d_model d_head -> (head d_head) d_model"),
        "W_K": einops.rearrange(key, "head d_model d_head -> (head d_head) d_model"),
    }
    sources = {"W_U": model.unembed.W_U, "W_gate": mlp.W_gate, "W_out": mlp.W_out, "W_Q": attn.W_Q, "W_K": key}
    assert {k: copies[k].data_ptr() == sources[k].data_ptr() for k in copies} == dict.fromkeys(copies, True)
    tokens = padded_batch(model)
    with torch.inference_mode():
        stored = model(tokens)
        for param in model.parameters():
            param.data = param.data.contiguous()  # the layout TransformerLens builds
        assert model.unembed.W_U.T.contiguous().data_ptr() != model.unembed.W_U.data_ptr()
        plain = model(tokens)
        assert store_weights_for_linear(model) > 0
        again = model(tokens)
    assert torch.equal(stored, plain) and torch.equal(again, plain)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rotary_is_bit_identical_to_apply_rotary(variant: str) -> None:
    model = tiny_random_model(**VARIANTS[variant])  # type: ignore[arg-type]
    attn = model.blocks[0].attn
    x = torch.randn(2, 9, attn.cfg.n_heads, attn.cfg.d_head)
    for offset in (0, 3):
        assert torch.equal(fast_forward.rotary(attn, x, offset, None), attn.apply_rotary(x, offset, None))


def test_rotary_falls_back_where_it_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_random_model()
    attn = model.blocks[0].attn
    x = torch.randn(2, 9, attn.cfg.n_heads, attn.cfg.d_head)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding: positions restart after the pads
    calls: list[int] = []
    original = type(attn).apply_rotary

    def counted(self: object, *args: object) -> Tensor:
        calls.append(1)
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(type(attn), "apply_rotary", counted)
    fast_forward.rotary(attn, x, 0, None)
    assert calls == []
    assert torch.equal(fast_forward.rotary(attn, x, 0, mask), original(attn, x, 0, mask))
    monkeypatch.setattr(attn.cfg, "rotary_adjacent_pairs", True)
    fast_forward.rotary(attn, x, 0, None)
    assert calls == [1, 1]
