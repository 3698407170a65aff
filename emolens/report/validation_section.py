"""Report section: where the emotion directions form (held-out accuracy per layer)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from emolens.report.page import Page
from emolens.validation import Validation
from emolens.vectors import EmotionVectors


def validation_section(page: Page, validation: Validation, vectors: EmotionVectors) -> None:
    """Per-layer accuracy table and plot, layer similarity, clusters and logit lens."""
    page.heading("Where the emotion directions form")
    page.paragraph(
        f"{len(vectors.emotions)} emotion vectors per layer, method {vectors.metadata.get('method')}, "
        f"fitted on {sum(vectors.metadata.get('stories_per_emotion', {}).values())} training stories; "
        f"held-out: {validation.n_stories} validation stories. Chance: top-1 {validation.chance_top1:.3f}, "
        f"top-5 {validation.chance_top5:.3f}. Best layer {validation.best_layer}; default layer "
        f"{validation.default_layer} (two-thirds depth rule)."
    )
    rows = [
        (
            acc.layer,
            f"{acc.top1:.3f}",
            f"[{acc.top1_ci[0]:.3f}, {acc.top1_ci[1]:.3f}]",
            f"{acc.top5:.3f}",
            f"{acc.cluster:.3f}",
            f"{acc.cluster_chance:.3f}",
        )
        for acc in validation.per_layer
    ]
    page.table(["layer", "top-1", "top-1 95% CI", "top-5", "cluster", "cluster chance"], rows)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    layers = [acc.layer for acc in validation.per_layer]
    axis.plot(layers, [acc.top1 for acc in validation.per_layer], marker="o", label="top-1")
    axis.fill_between(
        layers,
        [acc.top1_ci[0] for acc in validation.per_layer],
        [acc.top1_ci[1] for acc in validation.per_layer],
        alpha=0.2,
    )
    axis.plot(layers, [acc.top5 for acc in validation.per_layer], marker="s", label="top-5")
    axis.plot(layers, [acc.cluster for acc in validation.per_layer], marker="^", label="cluster")
    axis.axhline(validation.chance_top1, color="grey", linestyle=":", label="chance top-1")
    axis.axhline(validation.chance_top5, color="grey", linestyle="--", label="chance top-5")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer")
    axis.set_ylabel("held-out accuracy")
    axis.legend(fontsize=7)
    page.figure(figure, "Held-out accuracy per layer (shaded: bootstrap 95% CI of top-1)")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4, 3.5))
    image = axis.imshow(validation.layer_cosine, vmin=0, vmax=1, cmap="viridis")
    axis.set_xlabel("layer")
    axis.set_ylabel("layer")
    figure.colorbar(image)
    page.figure(figure, "Mean cosine between an emotion's vectors at two layers")
    plt.close(figure)

    page.heading(f"Clusters at layer {validation.default_layer} (k-means, k=10)", level=3)
    page.table(["cluster", "members"], [(name, ", ".join(m)) for name, m in validation.clusters.items()])
    page.heading(f"Logit lens at layer {validation.default_layer}", level=3)
    page.table(["emotion", "top tokens"], [(e, " | ".join(t)) for e, t in validation.logit_lens.items()])
