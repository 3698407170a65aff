"""Which residual-stream positions an intervention touches, in forward passes and in generation.

A position spec is ``"all"``, ``"prompt"``, ``"generated"``, ``"last"``, a boolean mask
(``[pos]`` or ``[batch, pos]``) or a list of position indices. Positions are *absolute*
token positions of the sequence (as in ``model.to_str_tokens``), also under the KV cache
of ``model.generate``, where each forward pass after the first sees one new position.

The tracker learns each forward pass's absolute offset from the shape of the first
layer's attention scores (``[batch, head, query_pos, key_pos]``: the offset is
``key_pos - query_pos``), and the prompt's length from the first forward pass inside the
context. So ``"prompt"`` means the tokens of the first forward pass, ``"generated"``
every later position, and ``"last"`` the prompt's final position, both with and
without the KV cache. Pass ``prompt_length`` to fix the split yourself (for instance
to steer only the continuation part of a plain forward over prompt + continuation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool
from torch import Tensor
from transformer_lens.hook_points import HookPoint

NAMED_POSITIONS = ("all", "prompt", "generated", "last")

PositionSpec = str | Tensor | Sequence[int]


def check_positions(positions: PositionSpec) -> PositionSpec:
    """Validate a position spec; one-line error naming the accepted forms."""
    if isinstance(positions, str):
        if positions not in NAMED_POSITIONS:
            raise ValueError(
                f"positions must be one of {', '.join(NAMED_POSITIONS)}, a bool mask or indices; got {positions!r}"
            )
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.ndim not in (1, 2):
            raise ValueError("a positions mask must be a bool tensor of shape [pos] or [batch, pos]")
        return positions
    indices = [int(p) for p in positions]
    if any(p < 0 for p in indices):
        raise ValueError(f"position indices must be >= 0 (absolute token positions), got {indices}")
    return indices


def describe(positions: PositionSpec) -> str:
    """A short JSON-friendly label of a spec (masks and index lists are summarised)."""
    if isinstance(positions, str):
        return positions
    if isinstance(positions, Tensor):
        return f"mask[{int(positions.sum())} of {positions.shape[-1]}]"
    return f"indices{list(positions)}"


@dataclass
class PositionTracker:
    """Keeps the absolute offset of the current forward pass and the prompt length."""

    positions: PositionSpec
    prompt_length: int | None = None
    offset: int = 0
    chunk: int = 0

    @property
    def needs_offsets(self) -> bool:
        return self.positions != "all"

    def observe_scores(self, scores: Tensor, hook: HookPoint) -> None:
        """Hook on ``blocks.0.attn.hook_attn_scores``: record this pass's offset and length."""
        query, key = scores.shape[-2], scores.shape[-1]
        self.offset, self.chunk = key - query, query
        if self.prompt_length is None:
            self.prompt_length = query + self.offset

    def mask(self, batch: int, n_pos: int, device: torch.device) -> Bool[Tensor, "batch pos"] | None:
        """Positions of the current pass to touch, or ``None`` for all of them."""
        if self.positions == "all":
            return None
        absolute = torch.arange(self.offset, self.offset + n_pos, device=device)
        prompt = self.prompt_length if self.prompt_length is not None else n_pos
        if self.positions == "prompt":
            row = absolute < prompt
        elif self.positions == "generated":
            row = absolute >= prompt
        elif self.positions == "last":
            row = absolute == prompt - 1
        elif isinstance(self.positions, Tensor):
            return _slice_mask(self.positions.to(device), absolute, batch)
        else:
            wanted = torch.tensor(list(self.positions), device=device, dtype=torch.long)
            row = torch.isin(absolute, wanted)
        return einops.repeat(row, "pos -> batch pos", batch=batch)


def is_offset_observer(hook_fn: object) -> bool:
    """Whether ``hook_fn`` is a tracker's :meth:`PositionTracker.observe_scores`.

    It only matters under a KV cache: a pass without one starts at offset 0, which is the
    tracker's default, so a forward that skips block 0 may skip the observer too.
    """
    return isinstance(getattr(hook_fn, "__self__", None), PositionTracker)


def _slice_mask(mask: Tensor, absolute: Tensor, batch: int) -> Bool[Tensor, "batch pos"]:
    """The columns of a user mask that fall in this pass (positions beyond the mask: untouched)."""
    full = mask if mask.ndim == 2 else einops.repeat(mask, "pos -> batch pos", batch=batch)
    if full.shape[0] != batch:
        raise ValueError(
            f"positions mask has {full.shape[0]} rows but the batch has {batch}; pass a [pos] mask or match the batch"
        )
    inside = absolute < full.shape[1]
    out = torch.zeros(batch, absolute.numel(), dtype=torch.bool, device=absolute.device)
    out[:, inside] = full[:, absolute[inside]]
    return out
