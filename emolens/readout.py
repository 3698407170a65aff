"""Reading emotion concepts off the residual stream: one window policy, calibrated by default.

**Raw reading** of a token at layer L: ``(resid - center[L]) . vectors[L, e]`` for each
emotion e (``EmotionVectors.project``).

**Window policy** (fitting, validation, ``score`` and ``read`` alike; see
:func:`emolens.extract.window_mask`): positions are counted as if a BOS sat at position 0,
so a model without BOS (SmolLM2) counts its first text token as position 1 and both kinds
of model read the same text tokens. A text's score is the mean reading over counted
positions ``window_start`` onward (the vectors' fit setting, 50 by default); a text
whose counted length is ``<= window_start`` averages its second half. A BOS is never read.

**Calibration** removes what neutral text reads, so a text with no particular emotion
reads near zero on every concept whatever its length, and no concept tops unrelated
texts because of where its tokens sit. It is measured on neutral text alone
(:func:`calibrate`: the packaged neutral corpus, each text whole; cutting the texts
into sentences as well was measured and did not help): per layer, per emotion and per
*position bin* (counted positions, fine at the start where readings move most) the mean
neutral reading (the *baseline*), and the spread of neutral readings about it (the
*scale*). Methods (chosen by measurement, see docs/results.md): ``"position"``
subtracts the baseline of the token's bin; ``"position+scale"`` also divides by the
scale (one per emotion and layer: a z-score against neutral tokens); ``"global+scale"``
uses one baseline for every position. The default, ``"position"``, was chosen on half of
the sentences of ``emolens/data/calibration.jsonl`` and reported on the other half.
Calibration is for short, everyday texts: on long held-out *stories* it lowers top-1
accuracy (measured), so validation reads raw by default. A calibrated token reading is
``(raw - baseline[bin(pos)]) / scale``; a calibrated score is its window mean. Pass
``calibrated=False`` for the raw projection.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.extract import Batch, ReadOptions, Reducer, check_layers, reduce, text_start

if TYPE_CHECKING:
    from emolens.vectors import EmotionVectors

CALIBRATION_METHODS = ("position", "position+scale", "global", "global+scale")
MEANS_ONLY_CALIBRATIONS = ("position", "global")  # linear in the residual: need no squared readings
DEFAULT_CALIBRATION = "position"  # chosen by experiments/calibration.py on gemma-3-270m (docs/results.md)
# counted positions where each bin starts: one bin per position early on, wider later
BIN_STARTS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 192, 256, 384, 512)
MIN_SENTENCE_WORDS = 4
CALIBRATION_STRIDE = 1  # every packaged neutral text, whole (~60k tokens on gemma): the measured choice
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z]{0,15}:\s+")


@dataclass
class Calibration:
    """What neutral text reads, per layer, position bin and emotion (see the module docstring)."""

    method: str
    bin_starts: list[int]
    baseline: Float[Tensor, "layer bin emotion"]
    scale: Float[Tensor, "layer emotion"]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of {CALIBRATION_METHODS}")
        if self.baseline.shape[1] != len(self.bin_starts) or self.baseline.shape[::2] != self.scale.shape:
            raise ValueError("calibration tensors do not match their bins, layers and emotions; recalibrate")
        if not bool(torch.isfinite(self.baseline).all() and (self.scale > 0).all()):
            raise ValueError("calibration has NaN, infinite or non-positive values; recalibrate on neutral text")

    def apply(
        self,
        readings: Float[Tensor, "layer batch pos emotion"],
        rows: Sequence[int],
        counted: Int[Tensor, "batch pos"],
    ) -> Float[Tensor, "layer batch pos emotion"]:
        """Calibrated readings: ``(raw - baseline[bin of counted position]) / scale`` at layer rows ``rows``."""
        bins = bin_index(counted, self.bin_starts)
        baseline = self.baseline[list(rows)].to(readings.device, readings.dtype)[:, bins]  # layer batch pos emotion
        scale = einops.rearrange(self.scale[list(rows)], "layer emotion -> layer 1 1 emotion")
        return (readings - baseline) / scale.to(readings.device, readings.dtype)


def bin_index(counted: Int[Tensor, "*shape"], bin_starts: Sequence[int]) -> Int[Tensor, "*shape"]:
    """Bin of each counted position (positions below the first bin go to bin 0)."""
    starts = torch.tensor(list(bin_starts), device=counted.device)
    return (torch.searchsorted(starts, counted.contiguous(), right=True) - 1).clamp(min=0)


def counted_positions(batch: Batch) -> Int[Tensor, "batch pos"]:
    """Positions counted as if a BOS sat at 0 (the window policy's numbering)."""
    positions = torch.arange(batch.tokens.shape[1], device=batch.window.device)
    return einops.repeat(positions + 1 - batch.first_text_position, "pos -> batch pos", batch=len(batch.indices))


def text_tokens(batch: Batch) -> Bool[Tensor, "batch pos"]:
    """Every real text token of each row (no BOS, no padding)."""
    positions = einops.rearrange(torch.arange(batch.tokens.shape[1], device=batch.window.device), "pos -> 1 pos")
    lengths = einops.rearrange(batch.lengths.to(batch.window.device), "batch -> batch 1")
    return (positions >= batch.first_text_position) & (positions < lengths)


def token_readings(
    vecs: EmotionVectors,
    batch: Batch,
    resid: Float[Tensor, "layer batch pos d_model"],
    layers: Sequence[int],
    calibrated: bool = True,
) -> Float[Tensor, "layer batch pos emotion"]:
    """Readings of every token of a batch at ``layers`` (rows of ``resid``), calibrated or raw."""
    rows = [vecs.layer_index(layer) for layer in layers]
    vectors = vecs.vectors[rows].to(resid.device, resid.dtype)
    centred = resid - einops.rearrange(vecs.center[rows].to(resid.device, resid.dtype), "layer d -> layer 1 1 d")
    readings = einops.einsum(centred, vectors, "layer batch pos d, layer emotion d -> layer batch pos emotion")
    if not calibrated:
        return readings
    return require_calibration(vecs).apply(readings, rows, counted_positions(batch))


def require_calibration(vecs: EmotionVectors) -> Calibration:
    """The vectors' calibration, or a one-line error naming how to get one."""
    if vecs.calibration is None:
        raise ValueError(
            "these vectors carry no calibration; run `emolens calibrate --vectors FILE` "
            "(emolens.readout.calibrate, about a minute) or pass calibrated=False for raw projections"
        )
    return vecs.calibration


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """One string is one text; a sequence must hold strings."""
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    if not all(isinstance(t, str) for t in out):
        raise ValueError("texts must be a string or a list of strings")
    return out


class WindowReadings:
    """Reducer: each text's window-mean reading at every requested layer: texts x layers x emotions."""

    def __init__(self, vecs: EmotionVectors, n_texts: int, layers: Sequence[int], calibrated: bool) -> None:
        self.vecs, self.layers, self.calibrated = vecs, list(layers), calibrated
        self.means = torch.zeros(n_texts, len(self.layers), len(vecs.emotions))

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        readings = token_readings(self.vecs, batch, resid, self.layers, self.calibrated)
        weights = batch.window.to(readings.dtype)
        sums = einops.einsum(readings, weights, "layer batch pos emotion, batch pos -> batch layer emotion")
        counts = einops.rearrange(weights.sum(dim=1).clamp(min=1), "batch -> batch 1 1")
        self.means[batch.indices] = (sums / counts).cpu()


def window_readings(
    vecs: EmotionVectors,
    model: HookedTransformer,
    texts: str | Sequence[str],
    layers: Sequence[int] | None = None,
    calibrated: bool = True,
    window_start: int | None = None,
    progress: str | None = None,
    also: Sequence[Reducer] = (),
) -> Float[Tensor, "text layer emotion"]:
    """Window-mean readings of each text at ``layers`` (default: all fitted layers) under the window policy.

    ``also``: more reducers fed by the same pass (their ``resid`` rows are ``layers``).
    """
    vecs.check_model(model)
    items = as_texts(texts)
    chosen = list(vecs.layers) if layers is None else [vecs.layers[vecs.layer_index(layer)] for layer in layers]
    if calibrated:
        require_calibration(vecs)
    start = fit_window_start(vecs) if window_start is None else window_start
    reducer = WindowReadings(vecs, len(items), chosen, calibrated)
    reduce(model, items, ReadOptions(layers=chosen, window_start=start, progress=progress), [reducer, *also])
    return reducer.means


def fit_window_start(vecs: EmotionVectors) -> int:
    """The window start the vectors were fitted with (the one policy every readout uses)."""
    return int(vecs.metadata.get("window_start", 50))


def score(
    vecs: EmotionVectors,
    model: HookedTransformer,
    texts: str | Sequence[str],
    layer: int | None = None,
    calibrated: bool = True,
    window_start: int | None = None,
) -> Float[Tensor, "text emotion"]:
    """Window-mean reading of each text on every emotion at ``layer`` (one string is one text)."""
    chosen = vecs.layers[vecs.layer_index(layer)]
    return window_readings(vecs, model, texts, [chosen], calibrated, window_start)[:, 0]


def read(
    vecs: EmotionVectors, model: HookedTransformer, text: str, layer: int | None = None, calibrated: bool = True
) -> Float[Tensor, "pos emotion"]:
    """Per-token readings of ``text`` (positions as in ``model.to_str_tokens``; a BOS row reads 0 when calibrated)."""
    vecs.check_model(model)
    if not isinstance(text, str):
        raise ValueError("read takes one text (a string); use score for several")
    chosen = vecs.layers[vecs.layer_index(layer)]
    rows: list[Float[Tensor, "pos emotion"]] = []

    class Collect:
        def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
            readings = token_readings(vecs, batch, resid, [chosen], calibrated)[0, 0]
            if calibrated and batch.first_text_position == 1:
                readings[0] = 0.0
            rows.append(readings.cpu())

    reduce(model, [text], ReadOptions(layers=[chosen]), [Collect()])
    return rows[0]


# ----- measuring a calibration ------------------------------------------------------------
def sentences(text: str) -> list[str]:
    """The sentences and lines of ``text`` with >= 4 words, speaker labels ("Person: ") dropped."""
    pieces = (_SPEAKER.sub("", piece.strip()) for piece in _SENTENCE_END.split(text))
    return [piece for piece in pieces if len(piece.split()) >= MIN_SENTENCE_WORDS]


def calibration_texts(neutral: Sequence[str], stride: int = CALIBRATION_STRIDE, split: bool = False) -> list[str]:
    """Every ``stride``-th neutral text whole and, with ``split``, each of its sentences (:func:`sentences`).

    Whole texts alone measured as well as texts plus sentences (docs/results.md), so the
    default does not split.
    """
    chosen = list(neutral)[::stride]
    return [*chosen, *(sentence for text in chosen for sentence in sentences(text) if split)]


class ResidBinSums:
    """Reducer: per layer and position bin, the count and float64 sum of every real text token's residual.

    Fed during another pass over neutral text (the fit's), it gives the means-only
    calibrations (``"position"``, ``"global"``) without a second forward pass
    (:meth:`ReadingStats.from_resid_sums`).
    """

    def __init__(self, layers: Sequence[int], d_model: int, bin_starts: Sequence[int] = BIN_STARTS) -> None:
        self.layers, self.bin_starts = list(layers), list(bin_starts)
        self.count = torch.zeros(len(self.bin_starts), dtype=torch.float64)
        self.sum = torch.zeros(len(self.layers), len(self.bin_starts), d_model, dtype=torch.float64)

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        bins = bin_index(counted_positions(batch), self.bin_starts)
        one_hot = F.one_hot(bins, len(self.bin_starts)) * einops.rearrange(text_tokens(batch), "b p -> b p 1")
        one_hot = one_hot.to(resid.dtype)  # batch pos bin: 1 where a real text token falls in the bin
        sums = einops.einsum(resid, one_hot, "layer batch pos d, batch pos bin -> layer bin d")
        self.count += einops.reduce(one_hot, "batch pos bin -> bin", "sum").double().cpu()
        self.sum += sums.double().cpu()


class ReadingStats:
    """Reducer: per layer, position bin and emotion, count / sum / sum of squares of raw neutral readings.

    ``sumsq`` is None when the stats come from :meth:`from_resid_sums` (means only).
    """

    def __init__(self, vecs: EmotionVectors, layers: Sequence[int], bin_starts: Sequence[int]) -> None:
        self.vecs, self.layers, self.bin_starts = vecs, list(layers), list(bin_starts)
        shape = (len(self.layers), len(self.bin_starts), len(vecs.emotions))
        self.count = torch.zeros(len(self.bin_starts), dtype=torch.float64)
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sumsq: Tensor | None = torch.zeros(shape, dtype=torch.float64)

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        assert self.sumsq is not None, "stats built from residual sums take no more batches"
        keep = text_tokens(batch)
        readings = token_readings(self.vecs, batch, resid, self.layers, calibrated=False)[:, keep].double().cpu()
        bins = bin_index(counted_positions(batch)[keep], self.bin_starts).cpu()
        self.count.index_add_(0, bins, torch.ones(len(bins), dtype=torch.float64))
        self.sum.index_add_(1, bins, readings)
        self.sumsq.index_add_(1, bins, readings**2)

    @classmethod
    def from_resid_sums(cls, vecs: EmotionVectors, sums: ResidBinSums) -> ReadingStats:
        """The same counts and sums from binned residual sums: readings are linear in the residual."""
        stats = cls(vecs, sums.layers, sums.bin_starts)
        rows = [vecs.layer_index(layer) for layer in sums.layers]
        vectors, center = vecs.vectors[rows].double(), vecs.center[rows].double()
        centred = sums.sum - einops.einsum(sums.count, center, "bin, layer d -> layer bin d")
        stats.count = sums.count.clone()
        stats.sum = einops.einsum(centred, vectors, "layer bin d, layer emotion d -> layer bin emotion")
        stats.sumsq = None
        return stats

    def calibration(self, method: str, settings: dict[str, Any]) -> Calibration:
        """The calibration of ``method`` from these sums (empty bins borrow the nearest earlier bin)."""
        filled = [i for i in range(len(self.bin_starts)) if self.count[i] > 0]
        if len(filled) == 0 or self.count.sum() < 2:
            raise ValueError("too few neutral tokens to calibrate; give more neutral texts")
        source = torch.tensor([max([f for f in filled if f <= i], default=filled[0]) for i in range(len(self.count))])
        count = einops.rearrange(self.count, "bin -> 1 bin 1")
        bin_mean = (self.sum / count.clamp(min=1))[:, source]
        total = self.count.sum()
        global_mean = self.sum.sum(dim=1) / total
        if method.endswith("+scale") and self.sumsq is None:
            raise ValueError(f"{method!r} needs squared readings; calibrate with a pass over neutral text (calibrate)")
        sumsq = self.sumsq if self.sumsq is not None else torch.zeros_like(self.sum)
        if method.startswith("position"):
            baseline = bin_mean
            within = (sumsq - self.sum**2 / count.clamp(min=1)).sum(dim=1)
            variance = within / (total - len(filled)).clamp(min=1)
        else:
            baseline = einops.repeat(global_mean, "layer emotion -> layer bin emotion", bin=len(self.bin_starts))
            variance = sumsq.sum(dim=1) / total - global_mean**2
        scale = variance.clamp(min=1e-12).sqrt() if method.endswith("+scale") else torch.ones_like(variance)
        settings = {**settings, "tokens": int(total), "tokens_per_bin": self.count.long().tolist()}
        return Calibration(method, self.bin_starts, baseline.float(), scale.float(), settings)


def reading_stats(
    vecs: EmotionVectors,
    model: HookedTransformer,
    neutral: Sequence[str] | None = None,
    token_budget: int = 4096,
    stride: int = CALIBRATION_STRIDE,
) -> tuple[ReadingStats, dict[str, Any]]:
    """One pass over the calibration texts of ``neutral`` (default: the packaged neutral corpus)."""
    from emolens.corpus import load_neutral

    vecs.check_model(model)
    base = list(neutral) if neutral is not None else load_neutral()
    if not base:
        raise ValueError("no neutral texts to calibrate on; pass neutral=[...] or use the packaged corpus")
    texts = calibration_texts(base, stride)
    stats = ReadingStats(vecs, check_layers(model, vecs.layers), BIN_STARTS)
    options = ReadOptions(layers=vecs.layers, token_budget=token_budget, progress="calibration")
    reduce(model, texts, options, [stats])
    return stats, calibration_settings(model, base, stride)


def calibration_settings(model: HookedTransformer, neutral: Sequence[str], stride: int) -> dict[str, Any]:
    """What a calibration records of its neutral texts (the tokens are added by :meth:`ReadingStats.calibration`)."""
    return {
        "neutral_texts": len(neutral),
        "stride": stride,
        "calibration_texts": len(calibration_texts(neutral, stride)),
        "neutral_sha256": hashlib.sha256("\n\x00".join(neutral).encode()).hexdigest(),
        "bos": text_start(model) == 1,
    }


def calibrate(
    vecs: EmotionVectors,
    model: HookedTransformer,
    neutral: Sequence[str] | None = None,
    method: str = DEFAULT_CALIBRATION,
) -> Calibration:
    """Measure the calibration of ``vecs`` on neutral text (no stories needed) and attach it to ``vecs``."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    stats, settings = reading_stats(vecs, model, neutral)
    vecs.calibration = stats.calibration(method, settings)
    return vecs.calibration


def calibrate_from_sums(
    vecs: EmotionVectors, model: HookedTransformer, neutral: Sequence[str], sums: ResidBinSums, method: str
) -> Calibration:
    """:func:`calibrate` from residual sums gathered on every text of ``neutral`` (means-only methods)."""
    if method not in MEANS_ONLY_CALIBRATIONS:
        raise ValueError(f"{method!r} needs a pass over neutral text of its own; use calibrate()")
    stats = ReadingStats.from_resid_sums(vecs, sums)
    vecs.calibration = stats.calibration(method, calibration_settings(model, neutral, 1))
    return vecs.calibration
