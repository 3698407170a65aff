"""The attribution experiment's report page and index headline (:mod:`emolens.experiments.attribution`).

Renders a result dictionary (``AttributionResult.to_dict()``): the named heads per
emotion, the ablation drop of the top-k writers beside k random components, attribution
mass per layer and circuitsvis attention patterns of the top heads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emolens.report.page import Page
from emolens.stats import estimate_text


def render(page: Page, data: dict[str, Any]) -> None:
    """Named heads per emotion, ablation drop vs random components, per-layer mass, attention patterns."""
    import matplotlib.pyplot as plt

    from emolens.report.views import attention_heads

    page.heading("attribution: which heads and MLPs write each emotion's reading")
    page.paragraph(
        f"Reading layer {data['read_layer']}, window from token {data['window_start']}; {data['n_components']} "
        f"additive components (embedding, heads, attention biases, MLPs, centre). The contributions sum to the "
        f"reading within {data['decomposition_max_error']:.1e} (mean |reading| {data['reading_scale']:.3g}). "
        "Components are ranked on each emotion's training stories and checked on its validation stories; "
        "intervals are bootstrap 95% over stories."
    )
    page.table(
        ["emotion", "valence", "arousal", "head", "train contribution", "validation contribution"],
        [
            (
                e["emotion"],
                e["valence"],
                e["arousal"],
                h["name"],
                estimate_text(h["train"]),
                estimate_text(h["validation"]),
            )
            for e in data["emotions"]
            for h in e["heads"]
        ],
    )
    page.table(
        ["emotion", "reading (validation)", "top components: train / validation contribution"],
        [
            (e["emotion"], estimate_text(e["reading_validation"]),
             ", ".join(f"{c['name']} {c['train']:+.3f}/{c['validation']:+.3f}" for c in e["top_components"]))
            for e in data["emotions"]
        ],
    )  # fmt: skip
    rows = data["ablation_by_k"]
    if rows:
        figure, axis = plt.subplots(figsize=(6, 3))
        for key, label, style in (("top", "top-k components", "o-"), ("random", "k random components", "s--")):
            values = [r[key] for r in rows]
            axis.errorbar(
                [r["k"] for r in rows],
                [v["value"] for v in values],
                yerr=[[v["value"] - v["low"] for v in values], [v["high"] - v["value"] for v in values]],
                fmt=style, capsize=2, label=label,
            )  # fmt: skip
        axis.set_xscale("log")
        axis.set_xlabel("components ablated (k)")
        axis.set_ylabel("reading drop")
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.legend(fontsize=7)
        page.figure(figure, f"{data['ablation']}-ablating each emotion's top-k writers vs k random components")
        plt.close(figure)
        page.table(
            ["k", "top-k drop", "random drop", "difference", "direct share of top-k", "prompts"],
            [
                (r["k"], *(estimate_text(r[key]) for key in ("top", "random", "difference", "direct_share")),
                 r["n_prompts"])
                for r in rows
            ],
        )  # fmt: skip
    layers = data["per_layer"]
    figure, axis = plt.subplots(figsize=(6, 3))
    for key, label in (("mass", "heads + MLP"), ("attn", "heads"), ("mlp", "MLP")):
        axis.plot([r["layer"] for r in layers], [r[key]["value"] for r in layers], "o-", label=label)
    axis.set_xlabel("layer")
    axis.set_ylabel("share of |direct contribution|")
    axis.legend(fontsize=7)
    page.figure(figure, f"Attribution mass per layer (embedding: {estimate_text(data['embed_mass'])})")
    plt.close(figure)
    for example in data["attention"]:
        attention_heads(
            page,
            example["tokens"],
            np.asarray(example["patterns"], dtype=float),
            example["head_names"],
            title=f"{example['emotion']}: top heads",
        )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = data["ablation_by_k"]
    if not rows:
        return []
    last = rows[-1]
    return [
        (
            f"attribution: reading drop, top-{last['k']} components ablated",
            f"{estimate_text(last['top'])} vs random {estimate_text(last['random'])}",
            "not measured this way in the study",
        )
    ]
