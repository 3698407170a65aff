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

The unembedding gets the same treatment of memory layout: TransformerLens 3.9 calls
``F.linear(residual, W_U.T.contiguous(), b_U)``, which copies ``W_U`` on every forward
(670 MB for Gemma 3's 262k-token vocabulary). :func:`store_unembed_transposed` keeps
``W_U`` as a transposed view of a contiguous ``vocab x d_model`` buffer, so that copy is a
no-op and the matmul (same call, same layout) gives bit-identical logits.

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
        q = attn.hook_rot_q(attn.apply_rotary(q, offset, attention_mask))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, attention_mask))
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


def store_unembed_transposed(model: HookedTransformer) -> None:
    """Lay ``W_U`` out as ``vocab x d_model`` in memory (the parameter keeps its ``d_model vocab`` shape).

    ``W_U.T.contiguous()`` in TransformerLens' ``Unembed.forward`` then returns the buffer
    itself instead of a copy. Values, shape and every use of ``W_U`` are unchanged.
    """
    weight = model.unembed.W_U
    if not weight.T.is_contiguous():
        weight.data = weight.data.T.contiguous().T


def disable_fast_attention(model: HookedTransformer) -> None:
    """Restore TransformerLens' own attention forward on every layer of ``model``."""
    for module in model.modules():
        if _is_fast(module):
            module.__class__ = type(module).__mro__[1]


def fast_attention_enabled(model: HookedTransformer) -> bool:
    """Whether any attention layer of ``model`` uses the fused path."""
    return any(_is_fast(m) for m in model.modules())
