"""The index page's form/act figure: where emotion directions form and where they act, on one layer axis.

Form: held-out accuracy per layer (validation.json). Act: per-layer steering effect
(feels.json) and ablation effect (ablation.json), each beside its random-direction
control, and attribution mass (attribution.json). Panels appear for the results that exist.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

ACT_PANELS = (
    ("feels", "steering effect"),
    ("ablation", "ablation effect"),
)


def _estimate(value: Any) -> tuple[float, float, float]:
    """(value, low, high) of an Estimate dict, or of a bare number (no interval)."""
    if isinstance(value, dict):
        return float(value["value"]), float(value["low"]), float(value["high"])
    return float(value), float(value), float(value)


def estimate_errorbar(axis: Any, layers: list[int], estimates: list[Any], label: str, style: str) -> None:
    """Points with 95% interval bars from Estimate dicts (``value``, ``low``, ``high``) or bare numbers."""
    points = [_estimate(e) for e in estimates]
    values = [p[0] for p in points]
    errors = [[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]]
    axis.errorbar(layers, values, yerr=errors, fmt=style, capsize=2, label=label, markersize=4)


def form_act_figure(results: dict[str, dict[str, Any]]) -> Figure | None:
    """The figure from whichever of the four results exist; ``None`` when none does."""
    panels: list[tuple[str, Any]] = []
    if "validation" in results:
        panels.append(("form", results["validation"]))
    panels += [(name, results[name]) for name, _ in ACT_PANELS if results.get(name, {}).get("per_layer")]
    if results.get("attribution", {}).get("per_layer"):
        panels.append(("attribution", results["attribution"]))
    if not panels:
        return None
    figure, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(7.5, 1.9 * len(panels) + 0.6), squeeze=False)
    labels = dict(ACT_PANELS)
    for axis, (name, data) in zip(axes[:, 0], panels, strict=True):
        rows = data["per_layer"]
        layers = [int(row["layer"]) for row in rows]
        if name == "form":
            axis.plot(layers, [row["top1"] for row in rows], marker="o", label="held-out top-1")
            axis.fill_between(layers, [r["top1_ci"][0] for r in rows], [r["top1_ci"][1] for r in rows], alpha=0.2)
            axis.axhline(data["chance_top1"], color="grey", linestyle=":", label="chance")
            axis.set_ylabel("form:\naccuracy")
        elif name == "attribution":
            estimate_errorbar(axis, layers, [row["mass"] for row in rows], "attribution mass", "o-")
            axis.set_ylabel("attribution\nmass")
        else:
            estimate_errorbar(axis, layers, [row["effect"] for row in rows], f"emotion direction ({name})", "o-")
            controlled = [row for row in rows if "control" in row]
            if controlled:
                control_layers = [int(row["layer"]) for row in controlled]
                estimate_errorbar(axis, control_layers, [row["control"] for row in controlled], "random control", "s--")
            axis.axhline(0, color="grey", linewidth=0.8)
            axis.set_ylabel(f"act:\n{labels[name]}")
        axis.legend(fontsize=7, loc="best")
        axis.grid(alpha=0.3)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("layer")
    figure.tight_layout()
    return figure
