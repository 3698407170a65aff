"""Choosing the readout calibration by measurement: ``python -m experiments.calibration --model NAME --vectors F``.

On the hand-written sentences of ``emolens/data/calibration.jsonl`` (half neutral, half
emotional with 1-3 expected emotions each; every row is in the ``select`` or the
``report`` half), at the vectors' default layer, for each candidate readout:

- ``top1_share``: share of texts whose top-1 emotion is the most frequent top-1 (target <= 0.1);
- ``hit10``: share of emotional sentences with an expected emotion in the top 10;
- ``neutral_abs``: mean |score| of neutral sentences over emotions (in the readout's own units);

each with a bootstrap 95% interval over sentences. Candidates: raw projections (window
of every text token, as ``score`` read before, and the fitting window), and each
calibration method of :mod:`emolens.readout` on both windows, with calibration statistics
from every third neutral text (the default), from every neutral text, and from whole
texts only (no sentences). The method is chosen on the ``select`` half and reported on
the ``report`` half. One pass over the neutral corpus gives every variant. Optionally
(``--validation``) also held-out story accuracy per layer, raw vs the default calibration.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import data_path, load_neutral, load_stories, read_jsonl
from emolens.extract import Batch, ReadOptions, Reducer, reduce, run_batches, window_mask
from emolens.files import atomic_write_text
from emolens.models import load_model
from emolens.readout import (
    BIN_STARTS,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    Calibration,
    ReadingStats,
    counted_positions,
    fit_window_start,
    sentences,
    text_tokens,
    token_readings,
    window_readings,
)
from emolens.stats import bootstrap
from emolens.vectors import EmotionVectors

TOP_K = 10
WINDOWS = ("all_tokens", "fit_window")


class Subset:
    """Feeds an inner reducer only the rows of texts whose index is in ``keep``."""

    def __init__(self, inner: ReadingStats, keep: set[int]) -> None:
        self.inner, self.keep = inner, keep

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        rows = [i for i, index in enumerate(batch.indices) if index in self.keep]
        if rows:
            sub = Batch(
                [batch.indices[i] for i in rows],
                batch.tokens[rows],
                batch.window[rows],
                batch.lengths[rows],
                batch.first_text_position,
            )
            self.inner.add(sub, resid[:, rows])


def neutral_statistics(vecs: EmotionVectors, model: HookedTransformer, layers: list[int]) -> dict[str, ReadingStats]:
    """One pass over every neutral text and its sentences; statistics for three calibration data sets."""
    neutral = load_neutral()
    texts, source = list(neutral), list(range(len(neutral)))
    for index, text in enumerate(neutral):
        pieces = sentences(text)
        texts += pieces
        source += [index] * len(pieces)
    every_third = {i for i, s in enumerate(source) if s % 3 == 0}
    whole_only = set(range(len(neutral)))
    stats = {name: ReadingStats(vecs, layers, BIN_STARTS) for name in ("stride3", "all", "whole_only")}
    reducers: list[Reducer] = [
        Subset(stats["stride3"], every_third),
        stats["all"],
        Subset(stats["whole_only"], whole_only),
    ]
    reduce(model, texts, ReadOptions(layers=layers, progress="neutral"), reducers)
    return stats


def sentence_readings(
    vecs: EmotionVectors, model: HookedTransformer, texts: Sequence[str], layer: int
) -> list[tuple[Float[Tensor, "pos emotion"], Int[Tensor, " pos"], dict[str, Bool[Tensor, " pos"]]]]:
    """Per sentence: raw readings of its text tokens, their counted positions and the windows over them."""
    out: list[Any] = [None] * len(texts)
    start = fit_window_start(vecs)
    for batch, resid in run_batches(model, texts, ReadOptions(layers=[layer], window_start=start)):
        readings = token_readings(vecs, batch, resid, [layer], calibrated=False)[0]
        counted = counted_positions(batch)
        keep = text_tokens(batch)
        fit = window_mask(batch.lengths, batch.tokens.shape[1], start, batch.first_text_position)
        for row, index in enumerate(batch.indices):
            mask = keep[row]
            out[index] = (
                readings[row, mask].cpu(),
                counted[row, mask].cpu(),
                {"all_tokens": torch.ones(int(mask.sum()), dtype=torch.bool), "fit_window": fit[row, mask].cpu()},
            )
    return out


def scores_for(
    items: list[Any], window: str, calibration: Calibration | None, row: int, last_only: bool = False
) -> Float[Tensor, "text emotion"]:
    """Each sentence's score under one window and calibration (None: raw)."""
    out = []
    for readings, counted, windows in items:
        values = readings
        if calibration is not None:
            values = calibration.apply(readings[None, None], [row], counted[None])[0, 0]
        mask = windows[window]
        if last_only:
            mask = torch.zeros_like(mask)
            mask[-1] = True
        out.append(values[mask].mean(dim=0))
    return torch.stack(out)


def metrics(
    scores: Float[Tensor, "text emotion"], rows: list[dict[str, Any]], emotions: list[str], seed: int = 0
) -> dict[str, Any]:
    """top1_share, hit10 and neutral_abs with bootstrap intervals over sentences."""
    top1 = scores.argmax(dim=1).numpy()
    topk = scores.topk(min(TOP_K, scores.shape[1]), dim=1).indices.numpy()
    expected = [[emotions.index(e) for e in r["emotions"] if e in emotions] for r in rows]
    emotional = np.array([i for i, r in enumerate(rows) if r["kind"] == "emotional"])
    neutral = np.array([i for i, r in enumerate(rows) if r["kind"] == "neutral"])
    hits = np.array([bool(set(expected[i]) & set(topk[i].tolist())) for i in emotional], dtype=float)
    neutral_abs = scores[neutral].abs().mean(dim=1).numpy()

    def share(idx: np.ndarray) -> float:
        counts = np.bincount(top1[idx], minlength=scores.shape[1])
        return float(counts.max() / idx.size)

    most = int(np.bincount(top1).argmax())
    return {
        "top1_share": bootstrap(share, len(rows), seed=seed).to_dict(),
        "most_frequent_top1": emotions[most],
        "hit10": bootstrap(lambda idx: float(hits[idx].mean()), hits.size, seed=seed).to_dict(),
        "neutral_abs": bootstrap(lambda idx: float(neutral_abs[idx].mean()), neutral_abs.size, seed=seed).to_dict(),
    }


def candidates(stats: dict[str, ReadingStats], settings: dict[str, Any]) -> dict[str, Calibration | None]:
    """Every readout compared: raw, and each calibration method on each statistics set."""
    out: dict[str, Calibration | None] = {"raw": None}
    for data, data_stats in stats.items():
        for method in CALIBRATION_METHODS:
            out[f"{method}|{data}"] = data_stats.calibration(method, settings)
    return out


def run(model: HookedTransformer, vecs: EmotionVectors, validation: bool = False) -> dict[str, Any]:
    """Every candidate's figures on both halves of the sentences, the choice, and (optionally) story accuracy."""
    rows = list(read_jsonl(data_path("calibration.jsonl")))
    layer = vecs.default_layer
    row = vecs.layer_index(layer)
    started = time.perf_counter()
    stats = neutral_statistics(vecs, model, list(vecs.layers))
    stats_seconds = time.perf_counter() - started
    items = sentence_readings(vecs, model, [r["text"] for r in rows], layer)
    results: dict[str, Any] = {}
    for name, calibration in candidates(stats, {"source": "experiments.calibration"}).items():
        for window in WINDOWS:
            for last_only in (False, True) if window == "fit_window" else (False,):
                key = f"{name}|{'last_token' if last_only else window}"
                scores = scores_for(items, window, calibration, row, last_only)
                results[key] = {
                    split: metrics(scores[idx], [rows[i] for i in idx], vecs.emotions)
                    for split, idx in (
                        ("select", [i for i, r in enumerate(rows) if r["split"] == "select"]),
                        ("report", [i for i, r in enumerate(rows) if r["split"] == "report"]),
                    )
                }
    out: dict[str, Any] = {
        "model": vecs.metadata.get("model", {}).get("model_name"),
        "layer": layer,
        "n_sentences": {
            "select": sum(r["split"] == "select" for r in rows),
            "report": sum(r["split"] == "report" for r in rows),
        },
        "neutral_pass_seconds": round(stats_seconds, 1),
        "candidates": results,
    }
    if validation:
        out["validation"] = story_accuracy(model, vecs, stats["whole_only"].calibration(DEFAULT_CALIBRATION, {}))
    return out


def story_accuracy(model: HookedTransformer, vecs: EmotionVectors, calibration: Calibration) -> dict[str, Any]:
    """Held-out story top-1 per layer, raw and calibrated (the same stories, the fitting window)."""
    stories = [s for s in load_stories(split="validation") if s.emotion in vecs.emotions]
    truth = torch.tensor([vecs.emotions.index(s.emotion) for s in stories])
    out = {}
    for name, calibrated in (("raw", False), ("calibrated", True)):
        chosen = replace(vecs, calibration=calibration)
        means = window_readings(chosen, model, [s.text for s in stories], calibrated=calibrated, progress=name)
        out[name] = [
            round(float((means[:, i].argmax(dim=1) == truth).float().mean()), 4) for i in range(len(vecs.layers))
        ]
    out["layers"] = list(vecs.layers)
    return out


def choose(per_model: Sequence[dict[str, Any]], split: str = "select") -> str:
    """Highest mean hit10 among candidates whose top1_share <= 0.1 on every model (else the lowest mean share)."""
    names = list(per_model[0]["candidates"])

    def figure(name: str, metric: str) -> list[float]:
        return [float(m["candidates"][name][split][metric]["value"]) for m in per_model]

    def rank(name: str) -> tuple[float, float]:
        return float(np.mean(figure(name, "hit10"))), -float(np.mean(figure(name, "top1_share")))

    passing = [n for n in names if max(figure(n, "top1_share")) <= 0.1]
    if passing:
        return max(passing, key=rank)
    return min(names, key=lambda n: (float(np.mean(figure(n, "top1_share"))), -rank(n)[0]))


def summary(per_model: Sequence[dict[str, Any]]) -> str:
    """Markdown: the choice (made on the select half) and every candidate's report-half figures per model."""
    chosen = choose(per_model)

    def cell(figures: dict[str, Any], metric: str) -> str:
        e = figures[metric]
        return f"{e['value']:.3f} [{e['low']:.2f}, {e['high']:.2f}]"

    lines = [
        f"Chosen on the select half: `{chosen}`.",
        "",
        "| readout | model | top-1 share (report) | hit@10 (report) | most frequent top-1 | top-1 share (select) |",
        "|---|---|---|---|---|---|",
    ]
    shown = ["raw|all_tokens", "raw|fit_window", chosen]
    shown += [n for n in per_model[0]["candidates"] if n.endswith("|stride3|fit_window") and n not in shown]
    shown += [n for n in per_model[0]["candidates"] if n.endswith("|stride3|all_tokens") and n not in shown]
    for name in shown:
        for data in per_model:
            report, select = data["candidates"][name]["report"], data["candidates"][name]["select"]
            lines.append(
                f"| `{name}` | {data['model']} | {cell(report, 'top1_share')} | {cell(report, 'hit10')} "
                f"| {report['most_frequent_top1']} | {select['top1_share']['value']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--summarise", nargs="+", default=None, help="print the markdown table of result JSONs")
    parser.add_argument("--vectors", default=None, help="default runs/<model>/vectors.safetensors")
    parser.add_argument("--out", default=None, help="directory for results/calibration.json (default runs/<model>)")
    parser.add_argument("--validation", action="store_true", help="also held-out story accuracy, raw vs calibrated")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summary([json.loads(Path(f).read_text()) for f in args.summarise]))
        return
    if args.model is None:
        raise SystemExit("--model is required (or --summarise FILES)")
    vectors_path = Path(args.vectors or f"runs/{args.model}/vectors.safetensors")
    if not vectors_path.exists():
        raise SystemExit(
            f"{vectors_path} not found; fit first: emolens fit --model {args.model} --out runs/{args.model}"
        )
    vecs = EmotionVectors.load(vectors_path)
    model = load_model(args.model)
    data = run(model, vecs, validation=args.validation)
    out = Path(args.out or f"runs/{args.model}") / "results" / "calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1))
    best = choose([data])
    for name in ("raw|all_tokens", "raw|fit_window", best):
        figures = data["candidates"][name]["report"]
        print(f"{name}: top1_share {figures['top1_share']['value']:.3f}, hit10 {figures['hit10']['value']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
