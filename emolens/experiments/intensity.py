"""Intensity: does an emotion's reading follow a quantity that makes a situation more or less emotional?

Each packaged template (``emolens/data/intensity.json``, e.g. "I just took {x} mg of
tylenol for my back pain." over doses 500..16000 mg) is filled with each of its values,
put in the model's chat format as a user message and read at the reply start (the last
prompt token, as in :mod:`emolens.experiments.scenarios`). For each emotion the template
names with an expected direction ("up"/"down" as the quantity grows):

- **Spearman rho** of the reading vs the quantity, its **sign vs the expectation** and a
  one-sided **permutation p** (the values shuffled: how often a shuffled order gives a
  rho at least as far in the expected direction);
- summary over templates (the independent unit, bootstrap CI): the **share of
  (template, emotion) pairs with the expected sign** and the mean rho signed by the
  expectation; beside a **random-emotion control**: the same share when each named
  emotion is replaced by a randomly drawn other emotion with the same expected direction
  (is it the named emotion that follows the quantity, or any reading?).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from transformer_lens import HookedTransformer

from emolens.corpus import data_path
from emolens.experiments.runner import experiment_main
from emolens.experiments.scenarios import reading_setup, reply_start_readings
from emolens.stats import bootstrap, estimate_text, rank_correlation_p
from emolens.vectors import EmotionVectors

PROFILE_TEMPLATES = {"quick": 4, "cpu": None, "full": None}
CONTROL_DRAWS = 200
DIRECTIONS = {"up": 1, "down": -1}


def spearman(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` (n) with each column of ``ys`` (n x k); 0 where either is constant."""
    ranks_x = scipy_stats.rankdata(x) - (len(x) + 1) / 2
    ranks_y = scipy_stats.rankdata(ys, axis=0) - (len(x) + 1) / 2
    scale = np.linalg.norm(ranks_x) * np.linalg.norm(ranks_y, axis=0)
    return np.divide(ranks_x @ ranks_y, scale, out=np.zeros(ys.shape[1]), where=scale > 0)


def load_templates() -> list[dict[str, Any]]:
    templates: list[dict[str, Any]] = json.loads(data_path("intensity.json").read_text())
    return templates


@dataclass
class IntensityResult:
    layer: int
    calibrated: bool
    templates: list[dict[str, Any]]  # id, template, values, unit, pairs (emotion, expected, rho, p, readings)
    share_expected_sign: dict[str, Any]  # Estimate over templates
    signed_rho: dict[str, Any]  # mean rho times expected sign, Estimate over templates
    control_share_expected_sign: float  # random other emotions with the same expected direction
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    layer: int | None = None,
    **kwargs: Any,
) -> IntensityResult:
    """Read each template over its values; Spearman rho of each named emotion vs the quantity."""
    chosen, calibrated = reading_setup(model, vecs, profile, layer)
    templates = load_templates()[: PROFILE_TEMPLATES[profile]]
    messages = [t["template"].format(x=value) for t in templates for value in t["values"]]
    readings = reply_start_readings(model, vecs, messages, chosen, calibrated).double().numpy()
    index = {e: i for i, e in enumerate(vecs.emotions)}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    agree: list[list[float]] = []  # per template: 1/0 per named pair
    signed: list[list[float]] = []
    control: list[list[float]] = []
    start = 0
    for template in templates:
        values = np.asarray(template["values"], dtype=float)
        block = readings[start : start + len(values)]  # value x emotion
        start += len(values)
        pairs = []
        for emotion, direction in template["expected"].items():
            if emotion not in index:
                continue
            sign = DIRECTIONS[direction]
            column = block[:, index[emotion]]
            rho = float(spearman(values, column[:, None])[0])
            others = rng.choice([i for i in range(len(vecs.emotions)) if i != index[emotion]], CONTROL_DRAWS)
            control_signs = sign * spearman(values, block[:, others]) > 0
            p = rank_correlation_p(values, column, sign, seed=seed)
            pairs.append(
                {
                    "emotion": emotion,
                    "expected": direction,
                    "rho": round(rho, 4),
                    "expected_sign": bool(sign * rho > 0),
                    "permutation_p": p,
                    "readings": np.round(column, 4).tolist(),
                }
            )
            control.append([float(np.mean(control_signs))])
        if pairs:
            agree.append([float(pair["expected_sign"]) for pair in pairs])
            signed.append([DIRECTIONS[pair["expected"]] * pair["rho"] for pair in pairs])
        rows.append({k: template[k] for k in ("id", "template", "values", "unit", "note")} | {"pairs": pairs})
    if len(agree) < 2:
        raise ValueError("fewer than 2 templates name a fitted emotion; fit the emotions in intensity.json")

    def pooled(groups: list[list[float]]) -> Any:
        return lambda idx: float(np.mean([v for i in idx for v in groups[i]]))

    return IntensityResult(
        layer=chosen,
        calibrated=calibrated,
        templates=rows,
        share_expected_sign=bootstrap(pooled(agree), len(agree), seed=seed).to_dict(),
        signed_rho=bootstrap(pooled(signed), len(signed), seed=seed).to_dict(),
        control_share_expected_sign=round(float(np.mean([c[0] for c in control])), 4),
        n_pairs=sum(len(a) for a in agree),
    )


def render(page: Any, data: dict[str, Any]) -> None:
    """Summary, a small plot per template (reading of each named emotion vs the quantity), pair table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page.heading(f"Intensity: readings over a quantity (layer {data['layer']}, reply start)")
    share, signed = data["share_expected_sign"], data["signed_rho"]
    page.paragraph(
        f"Share of {data['n_pairs']} (template, emotion) pairs whose Spearman rho has the expected sign: "
        f"{estimate_text(share, 2, signed=False)} (95% CI over templates); random other "
        f"emotions with the same expected direction: {data['control_share_expected_sign']:.2f}. Mean rho signed by "
        f"the expectation: {estimate_text(signed, 2)}. Readings "
        f"{'calibrated' if data['calibrated'] else 'raw'}."
    )
    shown = [t for t in data["templates"] if t["pairs"]]
    columns = 4
    n_rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, 2.6 * n_rows), squeeze=False)
    for axis in axes.flat[len(shown) :]:
        axis.set_visible(False)
    for axis, template in zip(axes.flat, shown, strict=False):
        for pair in template["pairs"]:
            arrow = "↑" if pair["expected"] == "up" else "↓"
            axis.plot(template["values"], pair["readings"], marker="o", label=f"{pair['emotion']} {arrow}")
        if min(template["values"]) > 0 and max(template["values"]) / min(template["values"]) > 20:
            axis.set_xscale("log")
        axis.set_title(template["id"], fontsize=8)
        axis.set_xlabel(template["unit"], fontsize=7)
        axis.legend(fontsize=6)
    figure.tight_layout()
    page.figure(figure, "Reading of each named emotion vs the quantity (arrow: expected direction)")
    plt.close(figure)
    page.table(
        ["template", "emotion", "expected", "Spearman rho", "permutation p"],
        [
            [t["template"], p["emotion"], p["expected"], f"{p['rho']:+.2f}", f"{p['permutation_p']:.3f}"]
            for t in shown
            for p in t["pairs"]
        ],
    )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page row: share of named emotions moving the expected way."""
    share = data["share_expected_sign"]
    return [
        (
            "intensity: share of named emotions whose reading moves the expected way with the quantity",
            f"{estimate_text(share, 2, signed=False)} (random emotions {data['control_share_expected_sign']:.2f})",
            "",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.intensity --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    return experiment_main("intensity", run, argv, __doc__.splitlines()[0] if __doc__ else None)
