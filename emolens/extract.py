"""Running texts through the model in batches, and streaming reductions of the residual stream.

:func:`run_batches` is the one place that runs the model: texts are tokenized once,
sorted by length and batched under a token budget, right-padded (under causal attention
and absolute rotary positions a real token never sees a pad, so a text's activations are
the same alone or in a padded batch), optional extra forward hooks are applied (steered or
ablated reads), only ``blocks.{L}.hook_resid_post`` of the requested layers is kept and
the pass stops after the last of them (no logits). It yields ``(batch, resid)``.

Reductions are small accumulators fed by it (:class:`TextMeansReducer`,
:class:`GroupSumsReducer`, :class:`TokenMomentsReducer`); :func:`reduce` runs one pass and
feeds several of them. :class:`ReadOptions` holds the settings they share. Which
positions a reduction averages over (the *window*), a text's last token and the tokens of
a character span are chosen by the position selectors of this module only: see
:func:`window_mask` for the window policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

DEFAULT_WINDOW_START = 50
DEFAULT_TOKEN_BUDGET = 4096

ForwardHook = tuple[str, Any]  # (hook name, fn(activation, hook) -> activation | None), as in run_with_hooks


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


class OptionFields(TypedDict, total=False):
    layers: Sequence[int] | str
    window_start: int
    token_budget: int
    progress: str | None


@dataclass(frozen=True)
class ReadOptions:
    """Settings shared by every batched read: layers, window start, token budget, progress label."""

    layers: Sequence[int] | str = "all"
    window_start: int = DEFAULT_WINDOW_START
    token_budget: int = DEFAULT_TOKEN_BUDGET
    progress: str | None = None  # tqdm description; None hides the bar


def read_options(options: ReadOptions | Sequence[int] | str = "all", **fields: Unpack[OptionFields]) -> ReadOptions:
    """``ReadOptions`` from an options object or a layer list, with ``fields`` overriding."""
    base = options if isinstance(options, ReadOptions) else ReadOptions(layers=options)
    return replace(base, **fields)


# ----- positions ------------------------------------------------------------------------
def text_start(model: HookedTransformer) -> int:
    """Position of a text's first token: 1 after a BOS, else 0."""
    return 1 if model.cfg.default_prepend_bos else 0


def window_mask(
    lengths: Int[Tensor, " batch"], n_pos: int, window_start: int, first_text_position: int = 1
) -> Bool[Tensor, "batch n_pos"]:
    """The window policy, the same on models with and without BOS.

    Positions are counted as if a BOS sat at position 0 (a model without BOS counts its
    first text token as position 1). The window is counted positions ``window_start``
    onward; a text whose counted length is ``<= window_start`` uses its second half
    (counted positions ``length // 2`` onward). So the BOS is in the window only when
    ``window_start`` is 0 (every position). ``lengths`` are real sequence lengths (BOS
    included when there is one).
    """
    shift = 1 - first_text_position  # counted = real + shift
    positions = einops.rearrange(torch.arange(n_pos, device=lengths.device), "pos -> 1 pos")
    counted_lengths = einops.rearrange(lengths, "batch -> batch 1") + shift
    start = torch.where(counted_lengths > window_start, window_start, counted_lengths // 2) - shift
    return (positions >= start) & (positions + shift < counted_lengths)


def last_token(lengths: Int[Tensor, " batch"]) -> Int[Tensor, " batch"]:
    """Position of each text's true last token (never position -1 of a padded row)."""
    return lengths - 1


def char_span_positions(model: HookedTransformer, text: str, start: int, end: int) -> list[int]:
    """Sequence positions (BOS counted) of the tokens overlapping characters ``start:end`` of ``text``."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; emolens reads text, so load one with a tokenizer")
    if not 0 <= start < end <= len(text):
        raise ValueError(f"character span {start}:{end} is not inside the text (0..{len(text)})")
    offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first = text_start(model)
    positions = [first + i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if not positions:
        raise ValueError(f"no token covers characters {start}:{end}; pass a span with text in it")
    return positions


# ----- batching and the forward pass -----------------------------------------------------
@dataclass
class Batch:
    """One forward pass worth of texts."""

    indices: list[int]  # positions of these texts in the caller's list
    tokens: Int[Tensor, "batch pos"]
    window: Bool[Tensor, "batch pos"]  # the positions each reduction averages over
    lengths: Int[Tensor, " batch"] = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    first_text_position: int = 1  # 1 after a BOS, else 0

    @property
    def last(self) -> Int[Tensor, " batch"]:
        return last_token(self.lengths)


def tokenize(model: HookedTransformer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with BOS when the model expects it (no padding)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; emolens reads text, so load one with a tokenizer")
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings; wrap a single text as [text]")
    if not texts:
        raise ValueError("no texts given; pass at least one non-empty string")
    encoded = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    max_len = model.cfg.n_ctx
    return [(bos + list(ids))[:max_len] for ids in encoded]


def count_short(model: HookedTransformer, texts: Sequence[str], window_start: int = DEFAULT_WINDOW_START) -> int:
    """How many texts are too short for the window and fall back to their second half."""
    shift = 1 - text_start(model)
    return sum(len(ids) + shift <= window_start for ids in tokenize(model, texts))


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
    first = text_start(model)
    out: list[Batch] = []
    group: list[int] = []
    for index in [*order, None]:
        longest = len(ids[group[-1]]) if group else 0
        if group and (index is None or len(ids[index]) * (len(group) + 1) > token_budget):
            tokens = torch.full((len(group), longest), int(pad_id or 0), dtype=torch.long)
            for row, text_index in enumerate(group):
                tokens[row, : len(ids[text_index])] = torch.tensor(ids[text_index])
            lengths = torch.tensor([len(ids[i]) for i in group])
            window = window_mask(lengths, longest, window_start, first)
            out.append(Batch(list(group), tokens, window, lengths, first))
            group = []
        if index is not None:
            group.append(index)
    return out


def run_batches(
    model: HookedTransformer,
    texts: Sequence[str],
    options: ReadOptions | None = None,
    hooks: Sequence[ForwardHook] = (),
    reuse_buffer: bool = False,
) -> Iterator[tuple[Batch, Float[Tensor, "layer batch pos d_model"]]]:
    """Yield each batch with its residual stream at ``options.layers`` (float32, model device).

    ``hooks`` are extra forward hooks run before the residual stream is read (so a hook at
    a read layer changes what is read there); they are removed after each batch. Each read
    layer is copied out as the forward reaches it, so the model's own activation is freed
    with its block. With ``reuse_buffer`` every batch is written into one block of memory
    that grows to the largest batch: no allocation (and no page faults) per batch, but a
    yielded tensor is only valid until the next batch is requested (:func:`reduce` uses it).
    """
    options = options or ReadOptions()
    chosen = check_layers(model, options.layers)
    slot = {resid_hook(layer): index for index, layer in enumerate(chosen)}
    planned = batches(model, texts, options.window_start, options.token_budget)
    device = model.cfg.device
    storage = torch.empty(0, device=device)
    resid = storage

    def keep(activation: Tensor, hook: HookPoint) -> None:
        resid[slot[str(hook.name)]].copy_(activation)

    reads = [(name, keep) for name in slot]
    with torch.inference_mode():
        for batch in tqdm(planned, desc=options.progress, disable=options.progress is None, unit="batch"):
            shape = (len(chosen), *batch.tokens.shape, model.cfg.d_model)
            if not reuse_buffer or storage.numel() < math.prod(shape):
                storage = torch.empty(math.prod(shape), device=device)
            resid = storage[: math.prod(shape)].view(shape)
            model.run_with_hooks(batch.tokens.to(device), fwd_hooks=[*hooks, *reads], stop_at_layer=max(chosen) + 1)
            batch.window = batch.window.to(resid.device)
            batch.lengths = batch.lengths.to(resid.device)
            yield batch, resid


def stream_resid(
    model: HookedTransformer,
    texts: Sequence[str],
    options: ReadOptions | Sequence[int] | str = "all",
    **fields: Unpack[OptionFields],
) -> Iterator[tuple[Batch, Float[Tensor, "layer batch pos d_model"]]]:
    """:func:`run_batches` with options given as a layer list and keywords (no extra hooks)."""
    return run_batches(model, texts, read_options(options, **fields))


# ----- reductions -----------------------------------------------------------------------
@runtime_checkable
class Reducer(Protocol):
    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None: ...


def reduce(
    model: HookedTransformer,
    texts: Sequence[str],
    options: ReadOptions,
    reducers: Sequence[Reducer],
    hooks: Sequence[ForwardHook] = (),
) -> None:
    """One pass over ``texts`` feeding every reducer each batch (reducers must not keep ``resid``)."""
    for batch, resid in run_batches(model, texts, options, hooks, reuse_buffer=True):
        for reducer in reducers:
            reducer.add(batch, resid)


def masked_means(
    resid: Float[Tensor, "layer batch pos d_model"], window: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch layer d_model"]:
    """Mean of each text's residual stream over its window positions."""
    weights = window.to(resid.dtype)
    # a broadcast matmul reads ``resid`` in place; an einsum would first copy it to "batch layer d pos"
    sums = torch.matmul(einops.rearrange(weights, "batch pos -> 1 batch 1 pos"), resid)
    counts = einops.rearrange(weights.sum(dim=1).clamp(min=1), "batch -> batch 1 1")
    return einops.rearrange(sums, "layer batch 1 d -> batch layer d") / counts


class TextMeansReducer:
    """Window mean of every text at every layer (on CPU): texts x layers x d_model."""

    def __init__(self, n_texts: int, n_layers: int, d_model: int) -> None:
        self.means = torch.zeros(n_texts, n_layers, d_model)

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        self.means[batch.indices] = masked_means(resid, batch.window).cpu()


def text_means(
    model: HookedTransformer,
    texts: Sequence[str],
    options: ReadOptions | Sequence[int] | str = "all",
    **fields: Unpack[OptionFields],
) -> Float[Tensor, "text layer d_model"]:
    """Window-mean residual stream of every text at every requested layer (on CPU)."""
    chosen = read_options(options, **fields)
    reducer = TextMeansReducer(len(texts), len(check_layers(model, chosen.layers)), model.cfg.d_model)
    reduce(model, texts, chosen, [reducer])
    return reducer.means


@dataclass
class GroupSums:
    """Running sums of window means per group: memory is groups x layers x d_model."""

    sums: Float[Tensor, "group layer d_model"]
    counts: Int[Tensor, " group"]

    def means(self) -> Float[Tensor, "group layer d_model"]:
        return self.sums / einops.rearrange(self.counts.clamp(min=1), "group -> group 1 1")


class GroupSumsReducer:
    """Per group, the sum (float64) and count of its texts' window means."""

    def __init__(self, groups: Sequence[int], n_groups: int, n_layers: int, d_model: int) -> None:
        self.group_of = torch.tensor(list(groups))
        self.sums = torch.zeros(n_groups, n_layers, d_model, dtype=torch.float64)
        self.counts = torch.zeros(n_groups, dtype=torch.long)

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        means = masked_means(resid, batch.window).double().cpu()
        batch_groups = self.group_of[batch.indices]
        self.sums.index_add_(0, batch_groups, means)
        self.counts.index_add_(0, batch_groups, torch.ones_like(batch_groups))

    def result(self) -> GroupSums:
        return GroupSums(self.sums.float(), self.counts)


def group_sums(
    model: HookedTransformer,
    texts: Sequence[str],
    groups: Sequence[int],
    n_groups: int,
    options: ReadOptions | Sequence[int] | str = "all",
    **fields: Unpack[OptionFields],
) -> GroupSums:
    """Per group, the sum (and count) of its texts' window means, accumulated batch by batch."""
    chosen = read_options(options, **fields)
    reducer = GroupSumsReducer(groups, n_groups, len(check_layers(model, chosen.layers)), model.cfg.d_model)
    reduce(model, texts, chosen, [reducer])
    return reducer.result()


@dataclass
class TokenMoments:
    """Token-level first and second moments per layer, accumulated in float64."""

    count: int
    mean: Float[Tensor, "layer d_model"]
    covariance: Float[Tensor, "layer d_model d_model"]
    mean_norm: Float[Tensor, " layer"]  # mean L2 norm of the residual stream


class TokenMomentsReducer:
    """Mean, covariance and mean norm of window tokens at each layer.

    Sums are taken of tokens minus a shift (the first batch's mean), so that a residual
    stream with a large mean does not cancel catastrophically in ``E[xx] - mean mean``;
    each batch's products are float32, accumulated in float64.
    """

    def __init__(self, n_layers: int, d_model: int) -> None:
        self.total = torch.zeros(n_layers, d_model, dtype=torch.float64)
        self.outer = torch.zeros(n_layers, d_model, d_model, dtype=torch.float64)
        self.norm_total = torch.zeros(n_layers, dtype=torch.float64)
        self.shift: Tensor | None = None
        self.count = 0

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        tokens = resid[:, batch.window]  # layer token d_model
        if self.shift is None:
            self.shift = tokens.mean(dim=1, keepdim=True)
        shifted = tokens - self.shift
        self.total += shifted.sum(dim=1).double().cpu()
        self.outer += einops.einsum(shifted, shifted, "layer token i, layer token j -> layer i j").double().cpu()
        self.norm_total += tokens.norm(dim=-1).sum(dim=1).double().cpu()
        self.count += tokens.shape[1]

    def result(self) -> TokenMoments:
        count, shift = self.count, self.shift
        if count < 2 or shift is None:
            raise ValueError("fewer than 2 window tokens in the neutral texts; give longer or more texts")
        shifted_mean = self.total / count
        spread = einops.einsum(shifted_mean, shifted_mean, "layer i, layer j -> layer i j")
        covariance = (self.outer - count * spread) / (count - 1)
        mean = shifted_mean + shift[:, 0].double().cpu()
        return TokenMoments(count, mean.float(), covariance.float(), (self.norm_total / count).float())


def token_moments(
    model: HookedTransformer,
    texts: Sequence[str],
    options: ReadOptions | Sequence[int] | str = "all",
    **fields: Unpack[OptionFields],
) -> TokenMoments:
    """Mean, covariance and mean norm of window tokens at each layer, streamed (see :class:`TokenMomentsReducer`)."""
    chosen = read_options(options, **fields)
    reducer = TokenMomentsReducer(len(check_layers(model, chosen.layers)), model.cfg.d_model)
    reduce(model, texts, chosen, [reducer])
    return reducer.result()
