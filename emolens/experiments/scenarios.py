"""Scenarios: do implicit situations read as the emotion they imply, where the reply starts?

Each packaged scenario (``emolens/data/scenarios.jsonl``: a situation that never names its
emotion, the emotions a person in it would feel, and the emotions a good reply would show)
is put in the model's chat format with ``emolens.chat_prompt`` (the plain
``Human: ...\\n\\nAssistant:`` transcript for a base model) and read at the last prompt
token, the position where the assistant's reply starts. That gives a
``scenario x emotion`` matrix of readings (calibrated when the vectors carry a calibration,
see :mod:`emolens.readout`).

Measures, over the scenarios as independent units (bootstrap CI):

- **rank** of each expected emotion among all fitted emotions in its scenario's row
  (1 = read highest; chance ``(E + 1) / 2``) and the **top-10 hit rate** (chance ``10 / E``);
  also after centring each emotion's column over scenarios (removes what every scenario
  reads alike, so a rank says "more than in the other scenarios");
- **permutation test**: the expected emotions are shuffled between scenarios and the mean
  rank recomputed (one-sided p that the true labels rank at least this well);
- the same for the **reply emotions**, and the reading of **"loving"** in every scenario
  (the study saw it active throughout the assistant's replies).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import data_path
from emolens.experiments.runner import experiment_main
from emolens.extract import Batch, ReadOptions, reduce
from emolens.models import chat_prompt
from emolens.readout import token_readings
from emolens.stats import estimate_text, mean_ci, permutation_p
from emolens.vectors import EmotionVectors

TOP_K = 10
PROFILE_SCENARIOS = {"quick": 12, "cpu": None, "full": None}
LOVING = "loving"


def check_run_profile(profile: str) -> None:
    if profile not in PROFILE_SCENARIOS:
        raise ValueError(f"profile must be quick|cpu|full, got {profile!r}")


def uses_calibration(vecs: EmotionVectors) -> bool:
    """Read calibrated when the vectors carry a calibration (``emolens calibrate``), else raw."""
    return vecs.calibration is not None


def reading_setup(model: HookedTransformer, vecs: EmotionVectors, profile: str, layer: int | None) -> tuple[int, bool]:
    """The checks every reading experiment starts with; returns (layer read, calibrated or raw)."""
    check_run_profile(profile)
    vecs.check_model(model)
    return vecs.layers[vecs.layer_index(layer)], uses_calibration(vecs)


class LastTokenReadings:
    """Reducer: each text's reading at its true last token (never a padded position)."""

    def __init__(self, vecs: EmotionVectors, n_texts: int, layer: int, calibrated: bool) -> None:
        self.vecs, self.layer, self.calibrated = vecs, layer, calibrated
        self.readings = torch.zeros(n_texts, len(vecs.emotions))

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        readings = token_readings(self.vecs, batch, resid, [self.layer], self.calibrated)[0]  # batch pos emotion
        rows = torch.arange(len(batch.indices), device=readings.device)
        self.readings[batch.indices] = readings[rows, batch.last].cpu()


def reply_start_readings(
    model: HookedTransformer, vecs: EmotionVectors, messages: Sequence[str], layer: int, calibrated: bool
) -> Float[Tensor, "text emotion"]:
    """Readings at the reply start of each user message in the model's chat format (one batched pass)."""
    prompts = [chat_prompt(model, [{"role": "user", "content": text}]) for text in messages]
    reducer = LastTokenReadings(vecs, len(prompts), layer, calibrated)
    reduce(model, prompts, ReadOptions(layers=[layer], progress="prompts"), [reducer])
    return reducer.readings


def descending_ranks(matrix: np.ndarray) -> np.ndarray:
    """Rank of each column within its row, 1 = highest (``row x column``)."""
    order = np.argsort(-matrix, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, matrix.shape[1] + 1)[None, :].repeat(len(matrix), 0), axis=1)
    return ranks


def label_ranks(ranks: np.ndarray, labels: list[list[int]], assignment: np.ndarray) -> np.ndarray:
    """Per row ``i``, the mean rank of the labels of row ``assignment[i]`` (NaN when it has none)."""
    return np.array([ranks[i, labels[j]].mean() if labels[j] else np.nan for i, j in enumerate(assignment)])


def rank_summary(ranks: np.ndarray, labels: list[list[int]], seed: int) -> dict[str, Any]:
    """Mean rank and top-k hit rate of ``labels`` per row, vs chance and shuffled labels."""
    n_rows, n_emotions = ranks.shape
    top_k = min(TOP_K, n_emotions)
    rows = np.array([i for i in range(n_rows) if labels[i]])
    if rows.size < 2:
        raise ValueError("fewer than 2 scenarios have an expected emotion among the fitted ones; fit more emotions")
    identity = np.arange(n_rows)
    per_row = label_ranks(ranks, labels, identity)[rows]
    hits = np.array([(ranks[i, labels[i]] <= top_k).mean() for i in rows])

    def negative_mean_rank(permutation: np.ndarray) -> float:
        # shuffle which scenario's labels each row is scored against; rows without labels draw none
        shuffled = label_ranks(ranks, labels, permutation)
        return -float(np.nanmean(shuffled))

    return {
        "n_scenarios": int(rows.size),
        "mean_rank": mean_ci(per_row, seed=seed).to_dict(),
        "chance_mean_rank": (n_emotions + 1) / 2,
        "top_k": top_k,
        "top_k_hit_rate": mean_ci(hits, seed=seed).to_dict(),
        "chance_top_k_hit_rate": top_k / n_emotions,
        "permutation_p": permutation_p(negative_mean_rank, n_rows, seed=seed),
    }


@dataclass
class ScenariosResult:
    layer: int
    calibrated: bool
    emotions: list[str]
    scenarios: list[dict[str, Any]]  # id, text, expected, reply expected, top-5 read, ranks
    readings: list[list[float]]  # scenario x emotion, at the reply start
    expected: dict[str, Any]  # rank summaries: raw rows and centred columns
    reply: dict[str, Any]
    loving: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_scenarios() -> list[dict[str, Any]]:
    return [json.loads(line) for line in data_path("scenarios.jsonl").read_text().splitlines() if line.strip()]


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    layer: int | None = None,
    **kwargs: Any,
) -> ScenariosResult:
    """Read every scenario at its reply start; rank its expected and reply emotions against chance."""
    chosen, calibrated = reading_setup(model, vecs, profile, layer)
    items = load_scenarios()[: PROFILE_SCENARIOS[profile]]
    matrix = reply_start_readings(model, vecs, [s["text"] for s in items], chosen, calibrated).double().numpy()
    index = {e: i for i, e in enumerate(vecs.emotions)}
    expected = [[index[e] for e in s["emotions"] if e in index] for s in items]
    reply = [[index[e] for e in s["reply_emotions"] if e in index] for s in items]
    ranks = descending_ranks(matrix)
    centred_ranks = descending_ranks(matrix - matrix.mean(axis=0, keepdims=True))
    rows = []
    for i, item in enumerate(items):
        top = np.argsort(-matrix[i])[:5]
        rows.append(
            {
                "id": item["id"],
                "text": item["text"],
                "emotions": item["emotions"],
                "reply_emotions": item["reply_emotions"],
                "top5": [vecs.emotions[j] for j in top],
                "expected_ranks": [int(ranks[i, j]) for j in expected[i]],
                "expected_ranks_centred": [int(centred_ranks[i, j]) for j in expected[i]],
            }
        )
    loving = None
    if LOVING in index:
        column = index[LOVING]
        loving = {
            "reading": mean_ci(matrix[:, column], seed=seed).to_dict(),
            "rank": mean_ci(ranks[:, column].astype(float), seed=seed).to_dict(),
            "share_top_k": mean_ci((ranks[:, column] <= TOP_K).astype(float), seed=seed).to_dict(),
            "share_positive": mean_ci((matrix[:, column] > 0).astype(float), seed=seed).to_dict(),
        }
    return ScenariosResult(
        layer=chosen,
        calibrated=calibrated,
        emotions=list(vecs.emotions),
        scenarios=rows,
        readings=np.round(matrix, 4).tolist(),
        expected={"raw": rank_summary(ranks, expected, seed), "centred": rank_summary(centred_ranks, expected, seed)},
        reply={"raw": rank_summary(ranks, reply, seed), "centred": rank_summary(centred_ranks, reply, seed)},
        loving=loving,
    )


def _summary_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, block in (("expected emotions", data["expected"]), ("reply emotions", data["reply"])):
        for variant in ("raw", "centred"):
            s = block[variant]
            rank, hits = s["mean_rank"], s["top_k_hit_rate"]
            rows.append(
                [
                    f"{name} ({variant})",
                    f"{estimate_text(rank, 1, signed=False)} (chance {s['chance_mean_rank']:.1f})",
                    f"{estimate_text(hits, 2, signed=False)} (chance {s['chance_top_k_hit_rate']:.2f})",
                    f"{s['permutation_p']:.4f}",
                    str(s["n_scenarios"]),
                ]
            )
    return rows


def render(page: Any, data: dict[str, Any]) -> None:
    """Summary table, rank histogram vs uniform chance, and each scenario's top readings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page.heading(f"Scenarios: implicit situations read at the reply start (layer {data['layer']})")
    page.paragraph(f"Readings {'calibrated against neutral text' if data['calibrated'] else 'raw (uncalibrated)'}.")
    top_k = data["expected"]["raw"]["top_k"]
    page.table(
        ["labels", "mean rank [95% CI]", f"top-{top_k} hit rate", "permutation p", "scenarios"], _summary_rows(data)
    )
    ranks = [r for s in data["scenarios"] for r in s["expected_ranks"]]
    figure, axis = plt.subplots(figsize=(6, 3))
    n_emotions = len(data["emotions"])
    axis.hist(ranks, bins=np.linspace(1, n_emotions + 1, 18).tolist(), label="expected emotions")
    axis.axhline(len(ranks) / 17, color="grey", linestyle=":", label="uniform (chance)")
    axis.set_xlabel(f"rank among {n_emotions} emotions (1 = read highest)")
    axis.set_ylabel("count")
    axis.legend(fontsize=7)
    page.figure(figure, "Where the expected emotions rank at the reply start")
    plt.close(figure)
    if data["loving"] is not None:
        loving = data["loving"]
        page.paragraph(
            f"'loving' across scenarios: mean reading {estimate_text(loving['reading'])}, mean rank "
            f"{loving['rank']['value']:.1f}, share of scenarios with 'loving' in the top {top_k}: "
            f"{loving['share_top_k']['value']:.2f}."
        )
    page.table(
        ["scenario", "expected (rank)", "reply expected", "read highest"],
        [
            [
                s["text"],
                ", ".join(f"{e} ({r})" for e, r in zip(s["emotions"], s["expected_ranks"], strict=False)),
                ", ".join(s["reply_emotions"]),
                ", ".join(s["top5"]),
            ]
            for s in data["scenarios"]
        ],
    )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page row: mean rank of the expected emotion at the reply start."""
    s = data["expected"]["raw"]
    rank = s["mean_rank"]
    return [
        (
            f"scenarios: mean rank of the implied emotion among {len(data['emotions'])} (chance "
            f"{s['chance_mean_rank']:.0f})",
            f"{estimate_text(rank, 1, signed=False)}, p = {s['permutation_p']:.2g}",
            "",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.scenarios --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    return experiment_main("scenarios", run, argv, __doc__.splitlines()[0] if __doc__ else None)
