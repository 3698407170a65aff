"""Forced choices read from two option tokens' logits at each prompt's last position.

A prompt ends where the model names its choice (for instance ``... Assistant: (``), and the
answer is the comparison of two tokens' logits there (``"A"`` vs ``"B"``). Only those two
logits are computed: the blocks run (``stop_at_layer=n_layers``, no unembedding), the final
norm is applied at each prompt's *true* last token and only the two columns of ``W_U``
(plus ``b_U``) are multiplied in. So a choice costs a body-only forward pass plus
``batch x 2 x d_model`` multiply-adds, never the ``batch x pos x d_vocab`` logits.

Prompts are batched by length and right-padded (see :mod:`emolens.extract`): under causal
attention a real token never sees a pad, and the answer is gathered at position
``length - 1`` of each row, never at position ``-1`` of a padded row. Interventions come
as hooks, either fixed (``hooks``) or built per batch (``batch_hooks(batch)``, for
position masks that depend on which prompts share the batch).

Asking the same prompts under many interventions that all sit at layer L or later (a
steering grid on a band of middle layers), the blocks below L compute the same thing every
time: :func:`resid_prefix` runs them once and keeps the residual stream entering block L,
and ``choice_logits(..., prefix=...)`` runs only blocks L.. on (``start_at_layer``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from emolens.extract import DEFAULT_TOKEN_BUDGET, Batch, ForwardHook, batches
from emolens.positions import is_offset_observer

BatchHooks = Callable[[Batch], Sequence[ForwardHook]]
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class OptionTokens:
    """The two answer tokens compared at the choice position (e.g. ``"A"`` and ``"B"``)."""

    first: int
    second: int

    @property
    def ids(self) -> list[int]:
        return [self.first, self.second]


def option_tokens(model: HookedTransformer, first: str = "A", second: str = "B") -> OptionTokens:
    """Token ids of two option strings; each must be exactly one token (no BOS)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; load one with a tokenizer to score choices")
    ids = []
    for option in (first, second):
        encoded = model.tokenizer(option, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"option {option!r} is {len(encoded)} tokens on this tokenizer; pick one-token options")
        ids.append(int(encoded[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"options {first!r} and {second!r} are the same token; pick two different options")
    return OptionTokens(ids[0], ids[1])


def option_logits(
    model: HookedTransformer, final_resid: Float[Tensor, "batch d_model"], options: OptionTokens
) -> Float[Tensor, "batch 2"]:
    """Logits of the two options from the last block's residual at one position per row.

    Applies ``ln_final``, then only the options' columns of ``W_U`` and ``b_U`` (and the
    model's output soft-cap when it has one), exactly as the full unembedding would.
    """
    normed = model.ln_final(einops.rearrange(final_resid, "batch d -> batch 1 d"))[:, 0]
    columns = model.W_U[:, options.ids]
    logits = einops.einsum(normed, columns.to(normed.dtype), "batch d, d option -> batch option")
    logits = logits + model.b_U[options.ids].to(normed.dtype)
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


@dataclass(frozen=True)
class ResidPrefix:
    """The unintervened residual stream entering block ``layer``, per planned batch of ``prompts``.

    ``resid[b]`` is ``batch pos d_model`` for ``planned[b]`` (the batches ``choice_logits``
    would plan for the same prompts and token budget).
    """

    layer: int
    prompts: tuple[str, ...]
    planned: list[Batch]
    resid: list[Tensor]  # one "batch pos d_model" tensor per planned batch (sizes differ)


def resid_prefix(
    model: HookedTransformer, prompts: Sequence[str], layer: int, token_budget: int = DEFAULT_TOKEN_BUDGET
) -> ResidPrefix:
    """Run blocks ``0..layer-1`` once on ``prompts`` (no hooks) and keep what enters block ``layer``."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"prefix layer {layer} is out of range; this model has layers 0..{model.cfg.n_layers - 1}")
    planned = batches(model, prompts, window_start=0, token_budget=token_budget)
    device = model.cfg.device
    with torch.inference_mode():
        resid = [model(batch.tokens.to(device), stop_at_layer=layer) for batch in planned]
    return ResidPrefix(layer, tuple(prompts), planned, resid)


def first_hooked_layer(hooks: Sequence[ForwardHook]) -> int | None:
    """The lowest block a hook runs in: ``blocks.N.*`` is N, embedding hooks (or a name filter) 0.

    Hooks after the last block (``ln_final``, ``unembed``) and position trackers' offset
    observers (needed only under a KV cache) do not count; no hooks gives None.
    """
    layers = []
    for name, fn in hooks:
        if is_offset_observer(fn):
            continue
        match = _BLOCK.match(name) if isinstance(name, str) else None
        if match:
            layers.append(int(match.group(1)))
        elif not isinstance(name, str) or name.startswith("hook_"):
            layers.append(0)
    return min(layers, default=None)


def choice_logits(
    model: HookedTransformer,
    prompts: Sequence[str],
    options: OptionTokens,
    hooks: Sequence[ForwardHook] = (),
    batch_hooks: BatchHooks | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: str | None = None,
    prefix: ResidPrefix | None = None,
) -> Float[Tensor, "prompt 2"]:
    """Logits of the two options at the last token of each prompt (in the prompts' order, on CPU).

    ``hooks`` run on every batch; ``batch_hooks(batch)`` adds hooks built for that batch
    (``batch.indices`` are the prompts' positions in ``prompts``). ``prefix`` (from
    :func:`resid_prefix` on the same prompts) skips the blocks below its layer; every hook
    must then sit at that layer or later.
    """
    planned = _planned(model, prompts, prefix, token_budget)
    out = torch.zeros(len(prompts), 2)
    device = model.cfg.device
    with torch.inference_mode():
        for b, batch in enumerate(tqdm(planned, desc=progress, disable=progress is None, unit="batch")):
            extra = list(batch_hooks(batch)) if batch_hooks is not None else []
            every: list[Any] = [*hooks, *extra]
            with model.hooks(fwd_hooks=every):
                if prefix is None:
                    resid = model(batch.tokens.to(device), stop_at_layer=model.cfg.n_layers)
                else:
                    _check_after(every, prefix.layer)
                    resid = model(prefix.resid[b], start_at_layer=prefix.layer, stop_at_layer=model.cfg.n_layers)
            last = gather_last(resid, batch.lengths.to(resid.device))
            out[batch.indices] = option_logits(model, last, options).float().cpu()
    return out


def _planned(
    model: HookedTransformer, prompts: Sequence[str], prefix: ResidPrefix | None, token_budget: int
) -> list[Batch]:
    if prefix is None:
        return batches(model, prompts, window_start=0, token_budget=token_budget)
    if prefix.prompts != tuple(prompts):
        raise ValueError("the prefix was computed on other prompts; build it with resid_prefix on these prompts")
    return prefix.planned


def _check_after(hooks: Sequence[ForwardHook], layer: int) -> None:
    first = first_hooked_layer(hooks)
    if first is not None and first < layer:
        raise ValueError(
            f"a hook sits at layer {first}, below the prefix layer {layer}; build the prefix at layer {first} or lower"
        )


def gather_last(
    resid: Float[Tensor, "batch pos d_model"], lengths: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_model"]:
    """Each row's residual at its true last token (``length - 1``)."""
    rows = torch.arange(resid.shape[0], device=resid.device)
    return resid[rows, lengths - 1]


def choice_probability(logits: Float[Tensor, "prompt 2"]) -> Float[Tensor, " prompt"]:
    """P(first option) under a softmax restricted to the two options."""
    return torch.sigmoid(logits[:, 0] - logits[:, 1])
