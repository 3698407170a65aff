"""Report page: where the emotion directions form (held-out accuracy per layer), drawn from validation.json."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from emolens.report.page import Page
from emolens.report.views import colored_tokens_multi


def render(page: Page, data: dict[str, Any]) -> None:
    """Per-layer accuracy table and plot, layer similarity, clusters and logit lens."""
    per_layer = data["per_layer"]
    page.paragraph(
        f"Held-out: {data['n_stories']} validation stories, each classified by the emotion whose vector its "
        f"centred window mean projects onto most strongly. Chance: top-1 {data['chance_top1']:.3f}, "
        f"top-5 {data['chance_top5']:.3f}. Best layer {data['best_layer']}; default layer "
        f"{data['default_layer']} (the study's two-thirds depth rule, not chosen on this split)."
    )
    rows = [
        (
            acc["layer"],
            f"{acc['top1']:.3f}",
            f"[{acc['top1_ci'][0]:.3f}, {acc['top1_ci'][1]:.3f}]",
            f"{acc['top5']:.3f}",
            f"{acc['cluster']:.3f}",
            f"{acc['cluster_chance']:.3f}",
        )
        for acc in per_layer
    ]
    page.table(["layer", "top-1", "top-1 95% CI", "top-5", "cluster", "cluster chance"], rows)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    layers = [acc["layer"] for acc in per_layer]
    axis.plot(layers, [acc["top1"] for acc in per_layer], marker="o", label="top-1")
    axis.fill_between(
        layers, [acc["top1_ci"][0] for acc in per_layer], [acc["top1_ci"][1] for acc in per_layer], alpha=0.2
    )
    axis.plot(layers, [acc["top5"] for acc in per_layer], marker="s", label="top-5")
    axis.plot(layers, [acc["cluster"] for acc in per_layer], marker="^", label="cluster")
    axis.axhline(data["chance_top1"], color="grey", linestyle=":", label="chance top-1")
    axis.axhline(data["chance_top5"], color="grey", linestyle="--", label="chance top-5")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer")
    axis.set_ylabel("held-out accuracy")
    axis.legend(fontsize=7)
    page.figure(figure, "Held-out accuracy per layer (shaded: bootstrap 95% CI of top-1 over stories)")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4, 3.5))
    image = axis.imshow(data["layer_cosine"], vmin=0, vmax=1, cmap="viridis")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer")
    axis.set_ylabel("layer")
    figure.colorbar(image)
    page.figure(figure, "Mean cosine between an emotion's vectors at two layers")
    plt.close(figure)

    examples = data.get("examples", [])
    if examples:
        page.heading(f"Per-token readings of held-out stories (layer {examples[0]['layer']})", level=3)
        page.paragraph(
            "Each story's own emotion first, then the emotions with the highest mean reading over it; "
            "pick one to colour the tokens (centred projection on the unit direction).",
            css_class="note",
        )
        for example in examples:
            colored_tokens_multi(
                page, example["tokens"], example["readings"], title=f"story written for {example['emotion']!r}"
            )
    page.heading(f"Clusters at layer {data['default_layer']} (k-means, k=10)", level=3)
    page.table(["cluster", "members"], [(name, ", ".join(m)) for name, m in data["clusters"].items()], left_columns=2)
    page.heading(f"Logit lens at layer {data['default_layer']}", level=3)
    page.table(["emotion", "top tokens"], [(e, " | ".join(t)) for e, t in data["logit_lens"].items()], left_columns=2)


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page rows: held-out accuracy at the default and the best layer, beside chance."""
    by_layer = {acc["layer"]: acc for acc in data["per_layer"]}

    def top1(layer: int) -> str:
        acc = by_layer[layer]
        return (
            f"{acc['top1']:.3f} [{acc['top1_ci'][0]:.3f}, {acc['top1_ci'][1]:.3f}] (chance {data['chance_top1']:.3f})"
        )

    return [
        (f"held-out top-1 at default layer {data['default_layer']}", top1(data["default_layer"]), "not reported"),
        (f"held-out top-1 at best layer {data['best_layer']}", top1(data["best_layer"]), "not reported"),
    ]
