"""Live emotion readings while a model writes: ``emolens.monitor(model, vecs, prompt)``.

Generation runs its own loop over TransformerLens' key-value cache (greedy by default)
with one hook on ``blocks.{L}.hook_resid_post``: each forward pass feeds the newest token,
and the hook keeps that token's residual vector, which ``vecs.project`` turns into its
readings. A token's reading needs the pass that *consumes* it, so the last generated token
gets one extra pass that stops at layer ``L`` (no logits). The hook is attached only during
each forward pass, never while the generator is suspended, so other model calls in between
are unaffected. Positions and values are those of ``vecs.read`` on the final text (BOS
included; calibrated by position against neutral text unless ``calibrated=False``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.hook_points import HookPoint

from emolens.concepts import check_emotion
from emolens.extract import resid_hook, text_start, tokenize
from emolens.readout import require_calibration
from emolens.vectors import EmotionVectors


@dataclass(frozen=True)
class TokenReading:
    """One token and its emotion readings (centred projections at the monitored layer)."""

    token: str  # the text this token adds (decoded incrementally, so spaces survive)
    token_id: int
    position: int  # as in ``vecs.read(model, final_text)``
    generated: bool  # False for the prompt's own tokens
    readings: Float[Tensor, " emotion"]  # over ``emotions``
    emotions: tuple[str, ...]
    top: tuple[tuple[str, float], ...]  # the ``top`` highest readings, highest first


def monitor(
    model: HookedTransformer,
    vecs: EmotionVectors,
    prompt: str,
    max_new_tokens: int = 32,
    emotions: Sequence[str] | None = None,
    layer: int | None = None,
    top: int = 5,
    temperature: float = 0.0,
    seed: int = 0,
    include_prompt: bool = True,
    stop_at_eos: bool = True,
    calibrated: bool = True,
) -> Iterator[TokenReading]:
    """Generate from ``prompt`` and yield each token's readings as soon as they exist.

    Greedy when ``temperature`` is 0, else sampled (seeded). ``emotions``: the readings
    kept (default: all fitted); ``layer``: default ``vecs.default_layer``. The prompt's
    tokens come first (``generated=False``) unless ``include_prompt`` is False.
    ``calibrated``: as in ``vecs.read`` (neutral-text calibration by position; a BOS reads 0).
    """
    vecs.check_model(model)
    chosen = vecs.layers[vecs.layer_index(layer)]
    names = tuple(vecs.emotions) if emotions is None else tuple(check_emotion(e, vecs.emotions) for e in emotions)
    if not names:
        raise ValueError("emotions is empty; pass at least one emotion name or None for all")
    if max_new_tokens < 0 or top < 1:
        raise ValueError(f"max_new_tokens must be >= 0 and top >= 1, got {max_new_tokens} and {top}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    columns = torch.tensor([vecs.emotions.index(e) for e in names])
    calibration = require_calibration(vecs) if calibrated else None
    first = text_start(model)
    (ids,) = tokenize(model, [prompt])
    if len(ids) + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + {max_new_tokens} new tokens exceed the context {model.cfg.n_ctx}"
        )
    assert model.tokenizer is not None  # tokenize() checked it
    eos = model.tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    decoded = ""
    written: list[int] = []

    def emit(new_ids: list[int], resid: Float[Tensor, "pos d_model"], generated: bool) -> Iterator[TokenReading]:
        nonlocal decoded
        start = len(written)
        readings = vecs.project(resid.float(), chosen)
        if calibration is not None:  # the same per-position calibration as emolens.readout.read
            counted = torch.arange(start, start + len(new_ids), device=readings.device) + 1 - first
            readings = calibration.apply(readings[None, None], [vecs.layer_index(chosen)], counted[None])[0, 0]
            if start == 0 and first == 1:
                readings[0] = 0.0
        readings = readings[:, columns.to(readings.device)].cpu()
        for offset, token_id in enumerate(new_ids):
            written.append(token_id)
            text = str(model.tokenizer.decode(written)) if model.tokenizer is not None else ""
            piece, decoded = text[len(decoded) :], text
            row = readings[offset]
            best = row.topk(min(top, len(names)))
            yield TokenReading(
                token=piece,
                token_id=token_id,
                position=len(written) - 1,
                generated=generated,
                readings=row,
                emotions=names,
                top=tuple((names[int(i)], round(float(v), 4)) for v, i in zip(best.values, best.indices, strict=True)),
            )

    logits, resid = _step(model, torch.tensor([ids]), cache, chosen, logits=max_new_tokens > 0)
    prompt_readings = list(emit(ids, resid, generated=False))  # also records the prompt's tokens and text
    if include_prompt:
        yield from prompt_readings
    for step in range(max_new_tokens):
        assert logits is not None
        next_id = _pick(logits, temperature, generator)
        if stop_at_eos and next_id == eos:
            return
        last = step == max_new_tokens - 1
        logits, resid = _step(model, torch.tensor([[next_id]]), cache, chosen, logits=not last)
        yield from emit([next_id], resid, generated=True)


def _step(
    model: HookedTransformer,
    tokens: Int[Tensor, "1 pos"],
    cache: TransformerLensKeyValueCache,
    layer: int,
    logits: bool,
) -> tuple[Float[Tensor, " vocab"] | None, Float[Tensor, "pos d_model"]]:
    """One cached forward pass: the last position's logits (if asked) and the new positions' residuals."""
    kept: list[Tensor] = []

    def keep(resid: Tensor, hook: HookPoint) -> None:
        kept.append(resid[0])

    with torch.inference_mode(), model.hooks(fwd_hooks=[(resid_hook(layer), keep)]):
        out = model(
            tokens.to(model.cfg.device),
            past_kv_cache=cache,
            return_type="logits" if logits else None,
            stop_at_layer=None if logits else layer + 1,
        )
    return (out[0, -1] if logits else None), kept[0]


def _pick(logits: Float[Tensor, " vocab"], temperature: float, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def format_reading(reading: TokenReading) -> str:
    """One terminal line: position, the token (quoted) and its top readings."""
    tops = "  ".join(f"{emotion} {value:+.2f}" for emotion, value in reading.top)
    return f"{reading.position:5d} {reading.token!r:<16} {tops}"


def strongest(readings: Sequence[TokenReading], count: int = 6) -> list[str]:
    """The ``count`` emotions with the highest reading on any generated token (any token if none was generated)."""
    if not readings:
        raise ValueError("no readings to rank; generate at least one token")
    pool = [r for r in readings if r.generated] or list(readings)
    peaks = torch.stack([r.readings for r in pool]).max(dim=0).values
    order = peaks.argsort(descending=True)[: min(count, peaks.numel())]
    return [readings[0].emotions[int(i)] for i in order]


def write_html(
    path: str | Path,
    readings: Sequence[TokenReading],
    emotions: Sequence[str] | None = None,
    title: str = "emolens monitor",
) -> str:
    """A self-contained page: the text's tokens coloured by each chosen emotion's reading (circuitsvis)."""
    from emolens.report.page import Page
    from emolens.report.views import colored_tokens_multi

    chosen = list(emotions) if emotions else strongest(readings)
    names = readings[0].emotions
    missing = [e for e in chosen if e not in names]
    if missing:
        raise ValueError(f"{', '.join(missing)} not monitored; pass them to --emotions or leave --emotions out")
    page = Page(title)
    generated = sum(r.generated for r in readings)
    page.paragraph(f"{len(readings)} tokens ({generated} generated). Colour: centred projection on each emotion.")
    values = {e: [float(r.readings[names.index(e)]) for r in readings] for e in chosen}
    colored_tokens_multi(page, [r.token for r in readings], values, title="readings per token")
    page.paragraph("Text: " + "".join(r.token for r in readings))
    return str(page.write(path))
