"""Direct attribution: which attention heads and MLPs write an emotion's reading, and ablating them.

The residual stream after block ``L`` is a sum: ``hook_resid_post[L] = resid_pre[0] +
sum_{l <= L} (attn_out[l] + mlp_out[l])`` (TransformerLens folds the pre-norms into the
weights; this identity holds exactly). Each ``attn_out[l]`` is itself a sum over heads,
``sum_h z[l, h] @ W_O[l, h] + b_O[l]``; models with a norm *after* attention (Gemma's
``ln1_post``) divide that sum by a per-position scale and multiply it by a gain, which
stays linear once the scale is read from the forward pass (``ln1_post.hook_scale``).

So the centred reading ``(resid_post[L] - center) . v`` of an emotion direction ``v``
splits exactly into one term per component: the embedding, every head, every layer's
attention bias, every MLP, and the constant ``-center . v``. Terms are averaged over the
same positions as the reading (a window mean or one position). Heads are projected
memory-light: ``W_O[h] @ (gain * v)`` first, then one contraction with ``z``.

:func:`ablated_readings` removes chosen components (zero, or their mean over reference
text) through hooks on ``hook_z`` and ``hook_mlp_out`` and reads again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from emolens.extract import resid_hook
from emolens.vectors import EmotionVectors

EMBED_HOOK = "blocks.0.hook_resid_pre"


@dataclass(frozen=True)
class Component:
    """One additive term of the residual stream: ``kind`` in embed, head, attn_bias, mlp, center."""

    kind: str
    layer: int = -1
    head: int = -1

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.head}"
        if self.kind == "attn_bias":
            return f"L{self.layer}.b_O"
        if self.kind == "mlp":
            return f"L{self.layer}.MLP"
        return self.kind

    @property
    def ablatable(self) -> bool:
        return self.kind in ("head", "mlp")


def components(model: HookedTransformer, layer: int) -> list[Component]:
    """Every additive term of ``hook_resid_post[layer]``, in the column order of :func:`direct_contributions`."""
    _check_layer(model, layer)
    out = [Component("embed")]
    for block in range(layer + 1):
        out += [Component("head", block, head) for head in range(model.cfg.n_heads)]
        out.append(Component("attn_bias", block))
        if not model.cfg.attn_only:
            out.append(Component("mlp", block))
    out.append(Component("center"))
    return out


def _check_layer(model: HookedTransformer, layer: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range: this model has layers 0..{model.cfg.n_layers - 1}")


def _post_attention_norm(model: HookedTransformer, block: int) -> tuple[str | None, Tensor | None]:
    """Hook name of the post-attention norm's scale and its gain, when the model has one (Gemma)."""
    if not model.cfg.use_normalization_before_and_after:
        return None, None
    norm = model.blocks[block].ln1_post
    gain = getattr(norm, "w", None)
    if not hasattr(norm, "hook_scale"):
        raise ValueError(f"block {block}'s post-attention norm has no scale hook; direct attribution needs one")
    return f"blocks.{block}.ln1_post.hook_scale", gain


def direct_contributions(
    model: HookedTransformer,
    vecs: EmotionVectors,
    tokens: Int[Tensor, "batch pos"],
    emotions: Sequence[str],
    weights: Float[Tensor, "batch pos"],
    layer: int | None = None,
) -> tuple[Float[Tensor, "batch component"], Float[Tensor, " batch"]]:
    """Each component's direct contribution to row ``b``'s reading of ``emotions[b]`` at ``layer``.

    ``weights[b]``: the positions the reading averages over (a window mask or a one-hot
    position; normalised here to sum to 1; padding must weigh 0). Returns the
    ``[batch, component]`` contributions (columns as :func:`components`, float64) and the
    readings themselves (``vecs.project`` of the weighted mean ``hook_resid_post``): each
    row of contributions sums to its reading up to float rounding.
    """
    chosen = vecs.layers[vecs.layer_index(layer)]
    _check_layer(model, chosen)
    if len(emotions) != tokens.shape[0]:
        raise ValueError(f"{len(emotions)} emotions for {tokens.shape[0]} rows; pass one emotion per row")
    directions = torch.stack([vecs.direction(e, chosen) for e in emotions]).double()
    device = model.cfg.device
    weights = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)).double().to(device)
    directions = directions.to(device)
    scale_hooks = {b: _post_attention_norm(model, b) for b in range(chosen + 1)}
    names = {EMBED_HOOK, resid_hook(chosen)}
    for block in range(chosen + 1):
        names |= {f"blocks.{block}.attn.hook_z", f"blocks.{block}.hook_mlp_out"}
        if scale_hooks[block][0] is not None:
            names.add(str(scale_hooks[block][0]))
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens.to(device), names_filter=lambda name: name in names, stop_at_layer=chosen + 1
        )

        def along(hook: str) -> Float[Tensor, " batch"]:
            acts = cache[hook].double()
            return einops.einsum(acts, weights, directions, "batch pos d, batch pos, batch d -> batch")

        columns: list[Tensor] = [along(EMBED_HOOK)]
        for block in range(chosen + 1):
            attn = model.blocks[block].attn
            scale_name, gain = scale_hooks[block]
            gained = directions if gain is None else directions * gain.double().to(device)
            per_position = weights
            if scale_name is not None:
                per_position = weights / einops.rearrange(cache[scale_name].double(), "batch pos 1 -> batch pos")
            read_heads = einops.einsum(attn.W_O.double(), gained, "head d_head d, batch d -> batch head d_head")
            z = cache[f"blocks.{block}.attn.hook_z"].double()
            columns += list(
                einops.einsum(z, read_heads, per_position, "batch pos head dh, batch head dh, batch pos -> head batch")
            )
            bias = einops.einsum(attn.b_O.double(), gained, "d, batch d -> batch")
            columns.append(bias * per_position.sum(dim=1))
            if not model.cfg.attn_only:
                columns.append(along(f"blocks.{block}.hook_mlp_out"))
        origin = vecs.center[vecs.layer_index(chosen)].double().to(device)
        columns.append(-einops.einsum(directions, origin, "batch d, d -> batch"))
        mean_resid = einops.einsum(cache[resid_hook(chosen)].double(), weights, "batch pos d, batch pos -> batch d")
    contributions = torch.stack(columns, dim=1)
    columns_of = torch.tensor([vecs.emotions.index(e) for e in emotions], device=device)
    readings = vecs.project(mean_resid.float(), chosen)[torch.arange(len(emotions), device=device), columns_of]
    return contributions.cpu(), readings.cpu()


@dataclass
class AblationMasks:
    """Which components each row loses: ``heads[layer]`` is [batch, head], ``mlps[layer]`` is [batch]."""

    heads: dict[int, Bool[Tensor, "batch head"]]
    mlps: dict[int, Bool[Tensor, " batch"]]

    @classmethod
    def from_components(cls, model: HookedTransformer, per_row: Sequence[Sequence[Component]]) -> AblationMasks:
        """Masks removing ``per_row[b]`` from row ``b`` (only heads and MLPs can be removed)."""
        batch = len(per_row)
        heads: dict[int, Tensor] = {}
        mlps: dict[int, Tensor] = {}
        for row, chosen in enumerate(per_row):
            for component in chosen:
                if component.kind == "head":
                    heads.setdefault(component.layer, torch.zeros(batch, model.cfg.n_heads, dtype=torch.bool))
                    heads[component.layer][row, component.head] = True
                elif component.kind == "mlp":
                    mlps.setdefault(component.layer, torch.zeros(batch, dtype=torch.bool))[row] = True
                else:
                    raise ValueError(f"{component.name} cannot be ablated; choose attention heads or MLPs")
        return cls(heads, mlps)


def component_means(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], weights: Float[Tensor, "batch pos"], layer: int
) -> dict[str, Tensor]:
    """Mean ``hook_z`` ([head, d_head]) and ``hook_mlp_out`` ([d_model]) of blocks ``<= layer`` over weighted positions.

    The reference values for mean ablation; ``weights`` picks the positions (e.g. window masks).
    """
    _check_layer(model, layer)
    names = {f"blocks.{b}.attn.hook_z" for b in range(layer + 1)} | {
        f"blocks.{b}.hook_mlp_out" for b in range(layer + 1)
    }
    device = model.cfg.device
    norm = weights.double().to(device) / weights.sum().clamp(min=1e-12)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens.to(device), names_filter=lambda name: name in names, stop_at_layer=layer + 1
        )
        return {
            name: einops.einsum(cache[name].double(), norm, "batch pos ... , batch pos -> ...").float()
            for name in names
            if name in cache
        }


def ablated_readings(
    model: HookedTransformer,
    vecs: EmotionVectors,
    tokens: Int[Tensor, "batch pos"],
    emotions: Sequence[str],
    weights: Float[Tensor, "batch pos"],
    masks: AblationMasks,
    means: dict[str, Tensor] | None = None,
    layer: int | None = None,
) -> Float[Tensor, " batch"]:
    """Row ``b``'s reading of ``emotions[b]`` at ``layer`` with its masked components replaced.

    Replacement is zero, or the component's mean from :func:`component_means` when
    ``means`` is given (mean ablation). The model runs to ``layer`` only.
    """
    chosen = vecs.layers[vecs.layer_index(layer)]
    device = model.cfg.device

    def replace(mask: Tensor, name: str, acts: Tensor) -> Tensor:
        value = torch.zeros((), dtype=acts.dtype, device=acts.device)
        if means is not None:
            value = means[name].to(acts.device, acts.dtype)
        return torch.where(mask.to(acts.device), value, acts)

    def head_hook(acts: Tensor, hook: HookPoint, mask: Tensor) -> Tensor:
        spread = einops.rearrange(mask, "batch head -> batch 1 head 1")
        return replace(spread, str(hook.name), acts)

    def mlp_hook(acts: Tensor, hook: HookPoint, mask: Tensor) -> Tensor:
        return replace(einops.rearrange(mask, "batch -> batch 1 1"), str(hook.name), acts)

    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = []
    for block, mask in masks.heads.items():
        if block <= chosen:
            hooks.append((f"blocks.{block}.attn.hook_z", partial(head_hook, mask=mask)))
    for block, mask in masks.mlps.items():
        if block <= chosen:
            hooks.append((f"blocks.{block}.hook_mlp_out", partial(mlp_hook, mask=mask)))
    weights = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)).float().to(device)
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(
            tokens.to(device), names_filter=lambda name: name == resid_hook(chosen), stop_at_layer=chosen + 1
        )
    mean_resid = einops.einsum(cache[resid_hook(chosen)].float(), weights, "batch pos d, batch pos -> batch d")
    columns = torch.tensor([vecs.emotions.index(e) for e in emotions], device=mean_resid.device)
    return vecs.project(mean_resid, chosen)[torch.arange(len(emotions), device=mean_resid.device), columns].cpu()


def layer_shares(
    contributions: Float[np.ndarray, "row component"], parts: Sequence[Component], layer: int
) -> dict[str, Float[np.ndarray, "row block"]]:
    """Each row's share of its total absolute direct contribution (the constant centre left out).

    ``"mass"``: per block ``<= layer``, its heads + attention bias + MLP; ``"attn"`` and
    ``"mlp"`` apart; ``"embed"`` (one column): the embedding's share. Columns of
    ``contributions`` are :func:`components` of ``layer``.
    """
    magnitude = np.abs(contributions)
    counted = np.array([c.kind != "center" for c in parts])
    total = np.maximum(magnitude[:, counted].sum(axis=1, keepdims=True), 1e-12)

    def share(select: list[bool]) -> np.ndarray:
        return magnitude[:, np.array(select)].sum(axis=1)

    kinds = {"mass": ("head", "attn_bias", "mlp"), "attn": ("head", "attn_bias"), "mlp": ("mlp",)}
    out = {
        key: np.stack([share([c.layer == b and c.kind in allowed for c in parts]) for b in range(layer + 1)], axis=1)
        for key, allowed in kinds.items()
    }
    out["embed"] = share([c.kind == "embed" for c in parts])[:, None]
    return {key: value / total for key, value in out.items()}


def head_patterns(
    model: HookedTransformer, tokens: Int[Tensor, " pos"], heads: Sequence[Component]
) -> Float[Tensor, "head dst src"]:
    """Attention patterns of ``heads`` (attention-head components) on one token sequence."""
    if not heads or any(h.kind != "head" for h in heads):
        raise ValueError("pass at least one component, all of kind 'head'")
    names = {f"blocks.{h.layer}.attn.hook_pattern" for h in heads}
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens[None].to(model.cfg.device),
            names_filter=lambda name: name in names,
            stop_at_layer=max(h.layer for h in heads) + 1,
        )
    return torch.stack([cache[f"blocks.{h.layer}.attn.hook_pattern"][0, h.head] for h in heads]).float().cpu()
