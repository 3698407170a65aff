"""Batched, streaming reductions of the residual stream at every layer.

Texts are tokenized once, sorted by length and batched by a token budget. Padding is on
the right, so under causal attention and absolute rotary positions a real token never
sees a pad: the activations of a text are the same alone or in a padded batch. Only
``blocks.{L}.hook_resid_post`` of the requested layers is kept and the forward pass stops
after the last of them (no logits). Reductions run over a token *window*: positions
``window_start`` onward (the study uses 50); a text too short for that falls back to its
second half, and the fallback is counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

DEFAULT_WINDOW_START = 50
DEFAULT_TOKEN_BUDGET = 4096


def resid_hook(layer: int) -> str:
    """TransformerLens hook name of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def check_layers(model: HookedTransformer, layers: Sequence[int] | str) -> list[int]:
    """``"all"`` or a list of block indices, validated against the model's depth."""
    n_layers = model.cfg.n_layers
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all' or a list of ints, got {layers!r}")
        return list(range(n_layers))
    out = [int(layer) for layer in layers]
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: this model has layers 0..{n_layers - 1}")
    if not out:
        raise ValueError("no layers given; pass 'all' or a non-empty list")
    return out


@dataclass
class Batch:
    """One forward pass worth of texts."""

    indices: list[int]  # positions of these texts in the caller's list
    tokens: Int[Tensor, "batch pos"]
    window: Bool[Tensor, "batch pos"]  # the positions each reduction averages over


def tokenize(model: HookedTransformer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with BOS when the model expects it (no padding)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; emolens reads text, so load one with a tokenizer")
    if not texts:
        raise ValueError("no texts given; pass at least one non-empty string")
    encoded = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    max_len = model.cfg.n_ctx
    return [(bos + list(ids))[:max_len] for ids in encoded]


def count_short(model: HookedTransformer, texts: Sequence[str], window_start: int = DEFAULT_WINDOW_START) -> int:
    """How many texts are too short for the window and fall back to their second half."""
    return sum(len(ids) <= window_start for ids in tokenize(model, texts))


def window_mask(lengths: Int[Tensor, " batch"], n_pos: int, window_start: int) -> Bool[Tensor, "batch n_pos"]:
    """Positions ``window_start..length-1``; texts of ``length <= window_start`` use their second half."""
    positions = einops.rearrange(torch.arange(n_pos, device=lengths.device), "pos -> 1 pos")
    lengths_col = einops.rearrange(lengths, "batch -> batch 1")
    start = torch.where(lengths_col > window_start, window_start, lengths_col // 2)
    return (positions >= start) & (positions < lengths_col)


def batches(
    model: HookedTransformer,
    texts: Sequence[str],
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> list[Batch]:
    """Length-sorted, right-padded batches of at most ``token_budget`` tokens (a longer text gets its own)."""
    ids = tokenize(model, texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad_id = model.tokenizer.pad_token_id if model.tokenizer is not None else 0
    out: list[Batch] = []
    group: list[int] = []
    for index in [*order, None]:
        longest = len(ids[group[-1]]) if group else 0
        if group and (index is None or len(ids[index]) * (len(group) + 1) > token_budget):
            tokens = torch.full((len(group), longest), int(pad_id or 0), dtype=torch.long)
            for row, text_index in enumerate(group):
                tokens[row, : len(ids[text_index])] = torch.tensor(ids[text_index])
            lengths = torch.tensor([len(ids[i]) for i in group])
            out.append(Batch(list(group), tokens, window_mask(lengths, longest, window_start)))
            group = []
        if index is not None:
            group.append(index)
    return out


def stream_resid(
    model: HookedTransformer,
    texts: Sequence[str],
    layers: Sequence[int] | str = "all",
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: str | None = None,
) -> Iterator[tuple[Batch, Float[Tensor, "layer batch pos d_model"]]]:
    """Yield each batch with its residual stream at ``layers`` (float32, model device)."""
    chosen = check_layers(model, layers)
    names = {resid_hook(layer) for layer in chosen}
    planned = batches(model, texts, window_start, token_budget)
    device = model.cfg.device
    with torch.inference_mode():
        for batch in tqdm(planned, desc=progress, disable=progress is None, unit="batch"):
            tokens = batch.tokens.to(device)
            _, cache = model.run_with_cache(
                tokens, names_filter=lambda name: name in names, stop_at_layer=max(chosen) + 1
            )
            resid = torch.stack([cache[resid_hook(layer)] for layer in chosen]).float()
            batch.window = batch.window.to(resid.device)
            yield batch, resid


def masked_means(
    resid: Float[Tensor, "layer batch pos d_model"], window: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch layer d_model"]:
    """Mean of each text's residual stream over its window positions."""
    weights = window.to(resid.dtype)
    sums = einops.einsum(resid, weights, "layer batch pos d, batch pos -> batch layer d")
    counts = einops.rearrange(weights.sum(dim=1).clamp(min=1), "batch -> batch 1 1")
    return sums / counts


def text_means(
    model: HookedTransformer,
    texts: Sequence[str],
    layers: Sequence[int] | str = "all",
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: str | None = None,
) -> Float[Tensor, "text layer d_model"]:
    """Window-mean residual stream of every text at every requested layer (on CPU)."""
    out: Tensor | None = None
    for batch, resid in stream_resid(model, texts, layers, window_start, token_budget, progress):
        means = masked_means(resid, batch.window).cpu()
        if out is None:
            out = torch.zeros(len(texts), means.shape[1], means.shape[2])
        out[batch.indices] = means
    assert out is not None
    return out


@dataclass
class GroupSums:
    """Running sums of window means per group: memory is groups x layers x d_model."""

    sums: Float[Tensor, "group layer d_model"]
    counts: Int[Tensor, " group"]

    def means(self) -> Float[Tensor, "group layer d_model"]:
        return self.sums / einops.rearrange(self.counts.clamp(min=1), "group -> group 1 1")


def group_sums(
    model: HookedTransformer,
    texts: Sequence[str],
    groups: Sequence[int],
    n_groups: int,
    layers: Sequence[int] | str = "all",
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: str | None = None,
) -> GroupSums:
    """Per group, the sum (and count) of its texts' window means, accumulated batch by batch."""
    n_layers = len(check_layers(model, layers))
    sums = torch.zeros(n_groups, n_layers, model.cfg.d_model, dtype=torch.float64)
    counts = torch.zeros(n_groups, dtype=torch.long)
    group_of = torch.tensor(list(groups))
    for batch, resid in stream_resid(model, texts, layers, window_start, token_budget, progress):
        means = masked_means(resid, batch.window).double().cpu()
        batch_groups = group_of[batch.indices]
        sums.index_add_(0, batch_groups, means)
        counts.index_add_(0, batch_groups, torch.ones_like(batch_groups))
    return GroupSums(sums.float(), counts)


@dataclass
class TokenMoments:
    """Token-level first and second moments per layer, accumulated in float64."""

    count: int
    mean: Float[Tensor, "layer d_model"]
    covariance: Float[Tensor, "layer d_model d_model"]
    mean_norm: Float[Tensor, " layer"]  # mean L2 norm of the residual stream


def token_moments(
    model: HookedTransformer,
    texts: Sequence[str],
    layers: Sequence[int] | str = "all",
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: str | None = None,
) -> TokenMoments:
    """Mean, covariance and mean norm of window tokens at each layer, streamed.

    Sums are taken of tokens minus a shift (the first batch's mean), so that a residual
    stream with a large mean does not cancel catastrophically in ``E[xx] - mean mean``;
    each batch's products are float32, accumulated in float64.
    """
    n_layers, d_model = len(check_layers(model, layers)), model.cfg.d_model
    total = torch.zeros(n_layers, d_model, dtype=torch.float64)
    outer = torch.zeros(n_layers, d_model, d_model, dtype=torch.float64)
    norm_total = torch.zeros(n_layers, dtype=torch.float64)
    shift: Tensor | None = None
    count = 0
    for batch, resid in stream_resid(model, texts, layers, window_start, token_budget, progress):
        tokens = resid[:, batch.window]  # layer token d_model
        if shift is None:
            shift = tokens.mean(dim=1, keepdim=True)
        shifted = tokens - shift
        total += shifted.sum(dim=1).double().cpu()
        outer += einops.einsum(shifted, shifted, "layer token i, layer token j -> layer i j").double().cpu()
        norm_total += tokens.norm(dim=-1).sum(dim=1).double().cpu()
        count += tokens.shape[1]
    if count < 2 or shift is None:
        raise ValueError("fewer than 2 window tokens in the neutral texts; give longer or more texts")
    shifted_mean = total / count
    covariance = (outer - count * einops.einsum(shifted_mean, shifted_mean, "layer i, layer j -> layer i j")) / (
        count - 1
    )
    mean = shifted_mean + shift[:, 0].double().cpu()
    return TokenMoments(count, mean.float(), covariance.float(), (norm_total / count).float())
