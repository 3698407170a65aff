"""A fused attention path for HookedTransformer, used only when no hook needs the pattern.

TransformerLens computes attention as scores -> causal mask -> softmax -> pattern @ v so
that ``hook_attn_scores`` and ``hook_pattern`` can see (and edit) the intermediate
``batch head query key`` tensors, and it expands grouped key/value heads to one per query
head first. When neither of those two hook points has a hook, the same result comes from
one ``torch.nn.functional.scaled_dot_product_attention`` call on the unexpanded key/value
heads, with the mask TransformerLens itself builds (causal, local window, padding).

Every other hook point is untouched: ``hook_q/k/v``, ``hook_rot_q/k`` and ``hook_z`` run on
the fast path exactly as on the hooked one, so reading, steering and ablating hooks keep
working. A call falls back to TransformerLens' own forward whenever a hook sits on
``hook_attn_scores`` or ``hook_pattern`` (``run_with_cache`` hooks everything; emolens'
generation hooks ``blocks.0.attn.hook_attn_scores``) and whenever the layer uses a feature
the fused path does not reproduce (see :func:`fused_attention_supported`).

Weights get the same care for memory layout. TransformerLens 3.9 hands ``F.linear`` a
fresh copy of most weight matrices on every forward: ``W_U.T.contiguous()`` in the
unembedding (670 MB for Gemma 3's 262k-token vocabulary), ``W_gate/W_in/W_out.T.contiguous()``
in the gated MLP, and an einops reshape of ``W_Q/W_K/W_V`` from ``head d_model d_head`` to
``(head d_head) d_model`` in the attention projections. :func:`store_weights_for_linear`
stores each of those parameters (same shape, same values) over a buffer already laid out
the way that call wants it, so the copy becomes a view and the matmul (same call, same
layout) gives bit-identical results.

This is the only place emolens changes TransformerLens' computation. It is switched on by
:func:`emolens.models.load_model` (``fast_attention=True``) and proven equal, hook by hook,
in tests/test_fast_forward.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.components.grouped_query_attention import GroupedQueryAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import softcap_enabled

#: Architectures whose attention applies a q/k norm inside ``forward`` (not reproduced here).
_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")

_FAST_CLASSES: dict[type, type] = {}


def fused_attention_supported(attn: AbstractAttention) -> bool:
    """Whether ``attn``'s configuration is one the fused path reproduces exactly."""
    cfg = attn.cfg
    return (
        cfg.positional_embedding_type in ("rotary", "standard")
        and (attn._attention_dir_override or cfg.attention_dir) == "causal"
        and cfg.original_architecture not in _OLMO
        and not cfg.use_attention_sinks
        and not cfg.load_in_4bit
        and not cfg.use_attn_result
        and not cfg.use_logn_attn
        and cfg.clip_qkv is None
        and not softcap_enabled(cfg.attn_scores_soft_cap)
    )


def _hooked(point: HookPoint) -> bool:
    return bool(point._forward_hooks or point._forward_pre_hooks or point._backward_hooks)


def needs_hooked_path(attn: AbstractAttention) -> bool:
    """True when a hook on the attention scores or pattern must see them."""
    return _hooked(attn.hook_attn_scores) or _hooked(attn.hook_pattern)


def _fused_forward(hooked_forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """An attention ``forward`` that takes the fused path unless it must fall back."""

    def forward(
        self,
        query_input,
        key_input,
        value_input,
        past_kv_cache_entry=None,
        additive_attention_mask=None,
        attention_mask=None,
        position_bias=None,
    ):
        if self.training or additive_attention_mask is not None or position_bias is not None or needs_hooked_path(self):
            return hooked_forward(
                self,
                query_input,
                key_input,
                value_input,
                past_kv_cache_entry,
                additive_attention_mask,
                attention_mask,
                position_bias,
            )
        return fused_attention_forward(self, query_input, key_input, value_input, past_kv_cache_entry, attention_mask)

    return forward


def fused_attention_forward(
    attn: Any,
    query_input: Float[Tensor, "batch pos d_model"],
    key_input: Float[Tensor, "batch kv_pos d_model"],
    value_input: Float[Tensor, "batch kv_pos d_model"],
    past_kv_cache_entry: Any = None,
    attention_mask: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens' attention forward with scores/softmax/pattern@v fused into SDPA.

    Shapes as in ``AbstractAttention.forward``: inputs ``batch pos d_model``; the optional
    ``attention_mask`` is ``batch kv_pos`` (1 = real token); returns ``batch pos d_model``.
    """
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    else:
        offset = 0
    if attn.cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(rotary(attn, q, offset, attention_mask))
        k = attn.hook_rot_k(rotary(attn, k, 0, attention_mask))
    keep = attn._make_causal_mask(
        query_ctx_length=q.shape[1], key_ctx_length=k.shape[1], past_kv_pos_offset=offset, device=q.device
    )
    if attention_mask is not None:
        keep = keep & einops.rearrange(attention_mask.to(q.device).bool(), "batch key -> batch 1 1 key")
    z = _sdpa(q, k, v, keep, 1.0 / attn.attn_scale)
    z = attn.hook_z(z.to(v.dtype))
    w_out = einops.rearrange(attn.W_O, "head d_head d_model -> d_model (head d_head)")
    flat = einops.rearrange(z.to(w_out.dtype), "batch pos head d_head -> batch pos (head d_head)")
    return F.linear(flat, w_out.to(z.device), attn.b_O.to(z.device))


def rotary(
    attn: Any, x: Float[Tensor, "batch pos head d_head"], offset: int, attention_mask: Tensor | None
) -> Float[Tensor, "batch pos head d_head"]:
    """``attn.apply_rotary`` with one copy of ``x`` instead of three, when it rotates every dimension.

    TransformerLens clones ``x``, writes the rotated halves into the clone and concatenates
    the result with an empty pass-through slice. For the common case (half-split pairs,
    ``rotary_dim == d_head``, no padding mask, no dynamic NTK, tables long enough) the same
    element-wise operations run on one concatenation, so the result is bit-identical;
    everything else falls back to ``apply_rotary``.
    """
    cfg = attn.cfg
    positions = x.shape[1]
    if (
        attention_mask is not None
        or cfg.rotary_adjacent_pairs
        or cfg.use_dynamic_ntk_rope
        or cfg.rotary_dim != x.shape[-1]
        or offset + positions > attn.rotary_cos.shape[0]
        or x.device != attn.rotary_cos.device
    ):
        return attn.apply_rotary(x, offset, attention_mask)
    half = x.shape[-1] // 2
    flipped = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos = einops.rearrange(attn.rotary_cos[offset : offset + positions], "pos d -> 1 pos 1 d")
    sin = einops.rearrange(attn.rotary_sin[offset : offset + positions], "pos d -> 1 pos 1 d")
    return x * cos + flipped * sin


def _sdpa(
    q: Float[Tensor, "batch pos head d_head"],
    k: Float[Tensor, "batch kv_pos kv_head d_head"],
    v: Float[Tensor, "batch kv_pos kv_head d_head"],
    keep: Tensor,
    scale: float,
) -> Float[Tensor, "batch pos head d_head"]:
    """Masked softmax attention on unexpanded key/value heads; fully masked rows give 0.

    ``keep`` is boolean, ``pos kv_pos`` or ``batch 1 pos kv_pos``. TransformerLens maps the
    NaN of an all-masked softmax row to a zero pattern row, hence a zero output row here.
    """
    q_, k_, v_ = (einops.rearrange(t, "batch pos head d -> batch head pos d") for t in (q, k, v))
    v_ = v_.to(q_.dtype)
    out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=keep, scale=scale, enable_gqa=k_.shape[1] != q_.shape[1])
    out = torch.nan_to_num(out, nan=0.0)
    return einops.rearrange(out, "batch head pos d -> batch pos head d")


def _fast_class(cls: type) -> type:
    if cls not in _FAST_CLASSES:
        namespace = {"forward": _fused_forward(cls.forward), "__slots__": ()}  # type: ignore[attr-defined]
        _FAST_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), namespace)
    return _FAST_CLASSES[cls]


def _is_fast(module: torch.nn.Module) -> bool:
    return type(module) in _FAST_CLASSES.values()


def enable_fast_attention(model: HookedTransformer) -> int:
    """Give every supported attention layer of ``model`` the fused path; returns how many.

    The modules keep their parameters, buffers, hook points and ``isinstance`` relations
    (their class becomes a subclass of the original that only overrides ``forward``).
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, AbstractAttention) and not _is_fast(module) and fused_attention_supported(module):
            module.__class__ = _fast_class(type(module))
            switched += 1
    return switched


def store_weights_for_linear(model: HookedTransformer) -> int:
    """Lay out the weights TransformerLens copies per forward so the copy is a view; returns how many.

    ``W_U`` (``d_model vocab``) and the gated MLP's ``W_gate``/``W_in`` (``d_model d_mlp``)
    and ``W_out`` (``d_mlp d_model``) are stored transposed, so ``.T.contiguous()`` returns
    the buffer itself; attention's ``W_Q``/``W_K``/``W_V`` (``head d_model d_head``, or the
    grouped ``_W_K``/``_W_V``) are stored as ``head d_head d_model``, so the reshape to
    ``(head d_head) d_model`` is a view. Shapes, values and hook points are unchanged.
    """
    relaid = _relayout(model.unembed.W_U, (0, 1))
    for module in model.modules():
        if isinstance(module, GatedMLP):
            relaid += sum(_relayout(getattr(module, name), (0, 1)) for name in ("W_gate", "W_in", "W_out"))
        elif isinstance(module, AbstractAttention):
            names = ("W_Q", "_W_K", "_W_V") if isinstance(module, GroupedQueryAttention) else ("W_Q", "W_K", "W_V")
            relaid += sum(_relayout(getattr(module, name), (1, 2)) for name in names)
    return relaid


def _relayout(param: Tensor, dims: tuple[int, int]) -> int:
    """Store ``param`` so that ``param.transpose(*dims)`` is contiguous (1 if it moved, else 0)."""
    if param.transpose(*dims).is_contiguous():
        return 0
    param.data = param.data.transpose(*dims).contiguous().transpose(*dims)
    return 1


def disable_fast_attention(model: HookedTransformer) -> None:
    """Restore TransformerLens' own attention forward on every layer of ``model``."""
    for module in model.modules():
        if _is_fast(module):
            module.__class__ = type(module).__mro__[1]


def fast_attention_enabled(model: HookedTransformer) -> bool:
    """Whether any attention layer of ``model`` uses the fused path."""
    return any(_is_fast(m) for m in model.modules())
