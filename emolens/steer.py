"""Interventions on the residual stream: add an emotion direction (steer) or remove it (ablate).

Both act at ``blocks.{L}.hook_resid_post`` with the direction fitted at that layer L, as
context managers whose hooks are removed on exit, also when the body raises, and both
work around plain forward passes and around ``model.generate`` with the KV cache (see
:mod:`emolens.positions` for what ``positions`` means there).

- ``steer``: ``resid += alpha * vecs.resid_norm(L) * v_hat(L)``. ``alpha`` is in units
  of the mean residual norm on neutral text at that layer (the study's convention).
- ``ablate``: ``resid -= (resid . B) B^T`` for an orthonormal basis ``B`` (one direction,
  the orthonormalised span of several, or the top principal components of the 171
  vectors); ``mode="mean"`` sets the projection to that of a reference mean (neutral
  text) instead of zero. Ablating twice equals ablating once.
- Controls are one argument away: ``control="random"`` uses a seeded random unit
  direction of the same strength (steer) or a random orthonormal basis of the same rank
  (ablate).

The hook lists (:func:`steering_hooks`, :func:`ablation_hooks`) are public for
``model.run_with_hooks`` and for composing interventions.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from emolens.extract import resid_hook
from emolens.positions import PositionSpec, PositionTracker, check_positions
from emolens.vectors import EmotionVectors

CONTROLS = (None, "random")

EmotionSpec = str | dict[str, float] | Tensor
Hook = tuple[str | Callable[..., Any], Callable[..., Any]]


@dataclass(frozen=True)
class TopPCs:
    """Ablation target: the top ``k`` principal components of the emotion vectors at each layer.

    With the study's geometry PC1 is valence and PC2 arousal, so ``TopPCs(2)`` is the
    affect plane.
    """

    k: int


AblationSpec = str | Sequence[str] | TopPCs


def check_alpha(alpha: float) -> float:
    value = float(alpha)
    if not math.isfinite(value):
        raise ValueError(
            f"alpha must be a finite number, got {alpha!r}; use e.g. alpha=0.05 (units of mean residual norm)"
        )
    return value


def check_control(control: str | None) -> str | None:
    if control not in CONTROLS:
        raise ValueError(f"control must be None or 'random', got {control!r}")
    return control


def intervention_layers(vecs: EmotionVectors, layers: int | Sequence[int] | str | None) -> list[int]:
    """``None`` -> the default layer; ``"all"`` -> every fitted layer; else the given layers, checked."""
    if layers is None:
        return [vecs.default_layer]
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
        return list(vecs.layers)
    chosen = [int(layers)] if isinstance(layers, int) else [int(layer) for layer in layers]
    if not chosen:
        raise ValueError("no layers given; pass an int, a list of ints or 'all'")
    for layer in chosen:
        vecs.layer_index(layer)  # raises with the fitted range
    return chosen


def random_unit(d_model: int, seed: int, salt: int) -> Float[Tensor, " d_model"]:
    """A seeded random unit vector (``salt`` separates layers and emotions)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    vector = torch.randn(d_model, generator=generator)
    return vector / vector.norm()


def steering_vector(
    vecs: EmotionVectors, emotion: EmotionSpec, layer: int, control: str | None = None, seed: int = 0
) -> Float[Tensor, " d_model"]:
    """The direction added at ``layer`` before scaling by ``alpha * resid_norm``.

    A name gives its unit vector at that layer; a dict ``{name: weight}`` the weighted sum
    of unit vectors; a raw ``[d_model]`` tensor is unit-normalised. With
    ``control="random"`` a seeded random direction of the same norm replaces it.
    """
    if isinstance(emotion, Tensor):
        if emotion.shape != vecs.vectors.shape[-1:]:
            raise ValueError(
                f"a raw steering vector must have shape [{vecs.vectors.shape[-1]}], got {tuple(emotion.shape)}"
            )
        if not bool(torch.isfinite(emotion).all()) or float(emotion.norm()) == 0:
            raise ValueError("a raw steering vector must be finite and non-zero")
        vector = emotion.float().cpu() / emotion.float().norm()
    elif isinstance(emotion, dict):
        if not emotion:
            raise ValueError("an emotion mix needs at least one {emotion: weight} entry")
        vector = torch.stack([check_alpha(w) * vecs.direction(e, layer) for e, w in emotion.items()]).sum(dim=0)
    else:
        vector = vecs.direction(emotion, layer)
    if control == "random":
        salt = layer * 7919 + (zlib.crc32(emotion.encode()) if isinstance(emotion, str) else 0)
        return random_unit(vector.shape[-1], seed, salt) * vector.norm()
    return vector


def masked_hooks(tracker: PositionTracker, edits: dict[int, Callable[[Tensor], Tensor]]) -> list[Hook]:
    """One ``resid_post`` hook per layer that applies ``edits[layer]`` at the tracker's positions.

    Untouched positions keep their exact values; when the positions need absolute
    offsets (anything but ``"all"``), a first hook on layer 0's attention scores feeds the tracker.
    """

    def hook_for(edit: Callable[[Tensor], Tensor]) -> Callable[[Tensor, HookPoint], Tensor]:
        def hook(resid: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:
            edited = edit(resid)
            mask = tracker.mask(resid.shape[0], resid.shape[1], resid.device)
            return edited if mask is None else torch.where(einops.rearrange(mask, "b p -> b p 1"), edited, resid)

        return hook

    hooks: list[Hook] = [(resid_hook(layer), hook_for(edit)) for layer, edit in edits.items()]
    if tracker.needs_offsets:
        hooks.insert(0, ("blocks.0.attn.hook_attn_scores", tracker.observe_scores))
    return hooks


def steering_hooks(
    model: HookedTransformer,
    vecs: EmotionVectors,
    emotion: EmotionSpec,
    alpha: float | None = None,
    layers: int | Sequence[int] | str | None = None,
    positions: PositionSpec = "all",
    control: str | None = None,
    seed: int = 0,
    prompt_length: int | None = None,
) -> list[Hook]:
    """Forward hooks that steer: for ``model.run_with_hooks(..., fwd_hooks=...)`` or ``model.hooks``."""
    vecs.check_model(model)
    if alpha is None:
        if not isinstance(emotion, dict):
            raise ValueError("alpha is required (e.g. alpha=0.05, in units of the mean residual norm)")
        alpha = 1.0
    strength = check_alpha(alpha)
    check_control(control)
    tracker = PositionTracker(check_positions(positions), prompt_length)
    deltas = {
        layer: strength * vecs.resid_norm(layer) * steering_vector(vecs, emotion, layer, control, seed)
        for layer in intervention_layers(vecs, layers)
    }

    def shift(delta: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda resid: resid + delta.to(resid.device, resid.dtype)

    return masked_hooks(tracker, {layer: shift(delta) for layer, delta in deltas.items()})


@contextlib.contextmanager
def steer(
    model: HookedTransformer,
    vecs: EmotionVectors,
    emotion: EmotionSpec,
    alpha: float | None = None,
    layers: int | Sequence[int] | str | None = None,
    positions: PositionSpec = "all",
    control: str | None = None,
    seed: int = 0,
    prompt_length: int | None = None,
) -> Iterator[HookedTransformer]:
    """Add ``alpha * resid_norm(L) * direction(emotion, L)`` at each L in ``layers`` inside the block.

    >>> with emolens.steer(model, vecs, "calm", alpha=0.1, layers=[6, 7, 8]):
    ...     text = model.generate("Today I", max_new_tokens=20, do_sample=False)
    """
    hooks = steering_hooks(model, vecs, emotion, alpha, layers, positions, control, seed, prompt_length)
    with model.hooks(fwd_hooks=hooks):
        yield model


# ----- ablation ------------------------------------------------------------------------


def orthonormal(columns: Float[Tensor, "d_model k"]) -> Float[Tensor, "d_model k"]:
    """Orthonormal basis of the span of ``columns`` (QR); fails on a rank-deficient set."""
    q, r = torch.linalg.qr(columns.double())
    if bool((r.diagonal().abs() < 1e-6).any()):
        raise ValueError("the ablation directions are linearly dependent; drop duplicates or ablate fewer emotions")
    return q.float()


def top_pcs(vectors: Float[Tensor, "emotion d_model"], k: int) -> Float[Tensor, "d_model k"]:
    """Top ``k`` principal axes of a set of emotion vectors (centred over emotions)."""
    if not 1 <= k <= min(vectors.shape):
        raise ValueError(f"TopPCs(k) needs 1 <= k <= {min(vectors.shape)}, got {k}")
    centred = vectors.double() - vectors.double().mean(dim=0, keepdim=True)
    _, _, v_transposed = torch.linalg.svd(centred, full_matrices=False)
    return einops.rearrange(v_transposed[:k], "k d -> d k").float()


def ablation_basis(
    vecs: EmotionVectors, target: AblationSpec, layer: int, control: str | None = None, seed: int = 0
) -> Float[Tensor, "d_model k"]:
    """Orthonormal basis removed at ``layer``; ``control="random"``: a random basis of equal rank."""
    if isinstance(target, TopPCs):
        basis = top_pcs(vecs.vectors[vecs.layer_index(layer)], target.k)
    else:
        names = [target] if isinstance(target, str) else list(target)
        if not names:
            raise ValueError("no emotions to ablate; pass a name, a list of names or TopPCs(k)")
        basis = orthonormal(torch.stack([vecs.direction(name, layer) for name in names], dim=1))
    if control == "random":
        salt = zlib.crc32(repr(target).encode())
        generator = torch.Generator().manual_seed(seed * 1_000_003 + layer * 7919 + salt)
        basis = orthonormal(torch.randn(basis.shape, generator=generator))
    return basis


def project_out(
    resid: Float[Tensor, "batch pos d_model"],
    basis: Float[Tensor, "d_model k"],
    target: Float[Tensor, " d_model"] | None = None,
    strength: float = 1.0,
) -> Float[Tensor, "batch pos d_model"]:
    """Remove ``strength`` x the component of ``resid`` in span(basis); with ``target``, move it to target's."""
    coefficients = einops.einsum(resid, basis, "batch pos d, d k -> batch pos k")
    if target is not None:
        coefficients = coefficients - einops.einsum(target, basis, "d, d k -> k")
    return resid - strength * einops.einsum(coefficients, basis, "batch pos k, d k -> batch pos d")


def ablation_hooks(
    model: HookedTransformer,
    vecs: EmotionVectors,
    emotions: AblationSpec,
    layers: int | Sequence[int] | str | None = "all",
    mode: str = "project",
    control: str | None = None,
    seed: int = 0,
    positions: PositionSpec = "all",
    reference: Float[Tensor, "layer d_model"] | None = None,
    strength: float = 1.0,
) -> list[Hook]:
    """Forward hooks that ablate; ``reference[i]`` is the mean residual at ``vecs.layers[i]`` for ``mode="mean"``."""
    vecs.check_model(model)
    check_control(control)
    if mode not in ("project", "mean"):
        raise ValueError(f"mode must be 'project' or 'mean', got {mode!r}")
    if mode == "mean" and reference is None:
        raise ValueError("mode='mean' needs reference=neutral_reference(model, vecs) (the mean residual per layer)")
    strength = check_alpha(strength)
    tracker = PositionTracker(check_positions(positions))
    chosen = intervention_layers(vecs, layers)
    bases = {layer: ablation_basis(vecs, emotions, layer, control, seed) for layer in chosen}
    targets = {
        layer: None if reference is None or mode == "project" else reference[vecs.layer_index(layer)]
        for layer in chosen
    }

    def remove(layer: int) -> Callable[[Tensor], Tensor]:
        def edit(resid: Float[Tensor, "batch pos d_model"]) -> Tensor:
            target = targets[layer]
            target = None if target is None else target.to(resid.device, resid.dtype)
            return project_out(resid, bases[layer].to(resid.device, resid.dtype), target, strength)

        return edit

    return masked_hooks(tracker, {layer: remove(layer) for layer in chosen})


@contextlib.contextmanager
def ablate(
    model: HookedTransformer,
    vecs: EmotionVectors,
    emotions: AblationSpec,
    layers: int | Sequence[int] | str | None = "all",
    mode: str = "project",
    control: str | None = None,
    seed: int = 0,
    positions: PositionSpec = "all",
    reference: Float[Tensor, "layer d_model"] | None = None,
) -> Iterator[HookedTransformer]:
    """Project ``emotions`` (a name, several names, or ``TopPCs(k)``) out of the residual stream at ``layers``.

    >>> with emolens.ablate(model, vecs, ["calm", "afraid"], layers="all"):
    ...     logits = model(tokens)
    """
    hooks = ablation_hooks(model, vecs, emotions, layers, mode, control, seed, positions, reference)
    with model.hooks(fwd_hooks=hooks):
        yield model


def neutral_reference(
    model: HookedTransformer, vecs: EmotionVectors, texts: Sequence[str] | None = None
) -> Float[Tensor, "layer d_model"]:
    """Mean residual stream on neutral text at each of ``vecs.layers`` (the target of ``mode="mean"``)."""
    from emolens.corpus import load_neutral
    from emolens.extract import token_moments

    neutral = list(texts) if texts is not None else load_neutral()[:64]
    window = int(vecs.metadata.get("window_start", 50))
    return token_moments(model, neutral, vecs.layers, window_start=window).mean
