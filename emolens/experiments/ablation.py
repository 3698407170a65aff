"""ablation: remove an emotion direction at one layer; how much of that emotion survives downstream?

Two measurements per layer L, each beside a random control of equal rank:

1. **Reading drop.** Each validation story of the chosen emotions is run once; at layer L
   its own emotion's direction (rank 1), or the valence axis (rank 1: the human-valence
   weighted sum of the 171 vectors), is set to its value at the reading origin (``center``,
   where every emotion reads zero) at every position, and the model
   continues from there (``start_at_layer``). The story's reading of its own emotion at
   every later layer L' (window mean, centred projection) is compared with the
   unablated run: ``drop(L, L') = mean(base - ablated) / mean(|base|)`` over stories. The
   per-layer effect is the mean over L' > L. Controls: a seeded random direction per story.
   Bootstrap 95% intervals resample emotions (the stories of one emotion share its direction).
2. **Feels change.** The same ablation during the feels prompts ("... and felt"):
   change of the ablated emotion's own word log-probability minus the mean change of the
   other emotion words, beside a random direction for each emotion (bootstrap over
   emotions and prompts at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import norms
from emolens.corpus import load_stories
from emolens.experiments.feels import EMOTIONS, dominance_by_emotion, feel_prompts
from emolens.experiments.runner import evenly_spaced, experiment_main
from emolens.extract import batches, resid_hook
from emolens.report.formact import estimate_errorbar
from emolens.report.page import Page
from emolens.stats import Estimate, bootstrap, crossed_mean_ci, estimate_text
from emolens.steer import random_unit
from emolens.sweep import sweep
from emolens.vectors import EmotionVectors

CONDITIONS = ("emotion", "emotion_random", "valence", "valence_random")
SIZES: dict[str, dict[str, Any]] = {  # layers: evenly spaced count (None: every layer); prompts: report prompts
    "quick": {"emotions": 3, "layers": 2, "prompts": 3},
    "cpu": {"emotions": 8, "layers": 4, "prompts": 6},  # sized for make demo in 20 minutes on 2 cores
    "full": {"emotions": 12, "layers": None, "prompts": 12},
}


@dataclass
class AblationResult:
    model: str
    profile: str
    emotions: list[str]
    n_stories: int
    per_layer: list[dict[str, Any]]  # layer, effect (emotion), control (random), valence, valence_control, feels
    drop_matrix: dict[str, list[list[float | None]]]  # condition -> [ablated layer][read layer] drop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def valence_axis(vecs: EmotionVectors, layer: int) -> Float[Tensor, " d_model"]:
    """Unit human-valence axis in the span of the emotion vectors at ``layer``."""
    table = norms()
    rated = [e for e in vecs.emotions if e in table and table[e].valence is not None]
    if len(rated) < 2:
        raise ValueError("the valence axis needs human norms for at least 2 fitted emotions")
    valence = torch.tensor([table[e].valence for e in rated])
    weights = valence - valence.mean()
    rows = vecs.vectors[vecs.layer_index(layer), [vecs.emotions.index(e) for e in rated]]
    axis = einops.einsum(weights, rows, "emotion, emotion d -> d")
    return axis / axis.norm()


def story_directions(
    vecs: EmotionVectors, layer: int, labels: list[str], condition: str, seed: int
) -> Float[Tensor, "story d_model"]:
    """The unit direction removed from each story at ``layer`` under ``condition``."""
    d_model = vecs.vectors.shape[-1]
    if condition == "emotion":
        return torch.stack([vecs.direction(e, layer) for e in labels])
    if condition == "valence":
        return einops.repeat(valence_axis(vecs, layer), "d -> story d", story=len(labels))
    salts = [vecs.emotions.index(e) if condition == "emotion_random" else 0 for e in labels]
    return torch.stack([random_unit(d_model, seed, layer * 997 + salt) for salt in salts])


def window_readings(
    vecs: EmotionVectors, resid: dict[int, Tensor], window: Tensor, labels: list[str]
) -> dict[int, Float[Tensor, " story"]]:
    """Per read layer, each story's centred projection of its window mean onto its own emotion."""
    weights = window.to(torch.float32)
    counts = einops.rearrange(weights.sum(dim=1).clamp(min=1), "story -> story 1")
    columns = torch.tensor([vecs.emotions.index(e) for e in labels])
    out = {}
    for layer, acts in resid.items():
        means = einops.einsum(acts.float(), weights, "story pos d, story pos -> story d") / counts
        out[layer] = vecs.project(means, layer)[torch.arange(len(labels)), columns].cpu()
    return out


def reading_drops(
    model: HookedTransformer, vecs: EmotionVectors, layers: list[int], emotions: list[str], seed: int
) -> tuple[dict[str, dict[int, dict[int, np.ndarray]]], list[str]]:
    """``drops[condition][L][L']``: per-story (base, ablated) readings stacked as [2, story]."""
    stories = [s for s in load_stories(split="validation") if s.emotion in emotions]
    window = int(vecs.metadata.get("window_start", 50))
    readers = [layer for layer in vecs.layers if layer > min(layers)]
    names = {resid_hook(layer) for layer in vecs.layers}
    collected: dict[str, dict[int, dict[int, list[Tensor]]]] = {c: {} for c in CONDITIONS}
    labels_all: list[str] = []
    n_layers = model.cfg.n_layers
    with torch.inference_mode():
        for batch in batches(model, [s.text for s in stories], window_start=window):
            labels = [stories[i].emotion for i in batch.indices]
            labels_all += labels
            tokens = batch.tokens.to(model.cfg.device)
            _, cache = model.run_with_cache(
                tokens, names_filter=lambda n: n in names, stop_at_layer=max(vecs.layers) + 1
            )
            base_resid = {layer: cache[resid_hook(layer)] for layer in vecs.layers}
            base = window_readings(vecs, base_resid, batch.window, labels)
            for layer in layers:
                later = [r for r in readers if r > layer]
                for condition in CONDITIONS:
                    directions = story_directions(vecs, layer, labels, condition, seed).to(tokens.device)
                    resid = base_resid[layer]
                    origin = vecs.center[vecs.layer_index(layer)].to(resid.device, resid.dtype)
                    coefficients = einops.einsum(resid - origin, directions, "story pos d, story d -> story pos")
                    edited = resid - einops.einsum(coefficients, directions, "story pos, story d -> story pos d")
                    _, after = model.run_with_cache(
                        edited,
                        start_at_layer=layer + 1,
                        stop_at_layer=n_layers,
                        names_filter=lambda n, later=later: n in {resid_hook(r) for r in later},
                    )
                    ablated = window_readings(vecs, {r: after[resid_hook(r)] for r in later}, batch.window, labels)
                    for r in later:
                        pair = torch.stack([base[r], ablated[r]])
                        collected[condition].setdefault(layer, {}).setdefault(r, []).append(pair)
    drops = {
        c: {layer: {r: torch.cat(parts, dim=1).numpy() for r, parts in by_read.items()} for layer, by_read in v.items()}
        for c, v in collected.items()
    }
    return drops, labels_all


def drop_estimate(pairs_by_read: dict[int, np.ndarray], labels: list[str], seed: int) -> Estimate | None:
    """Mean over read layers of mean(base - ablated) / mean(|base|), bootstrapped over emotions."""
    if not pairs_by_read:
        return None
    groups = sorted(set(labels))
    members = [np.array([i for i, e in enumerate(labels) if e == g]) for g in groups]

    def statistic(index: np.ndarray) -> float:
        rows = np.concatenate([members[i] for i in index])
        ratios = [
            (p[0, rows] - p[1, rows]).mean() / max(np.abs(p[0, rows]).mean(), 1e-9) for p in pairs_by_read.values()
        ]
        return float(np.mean(ratios))

    return bootstrap(statistic, len(groups), seed=seed)


def run(model: HookedTransformer, vecs: EmotionVectors, profile: str = "cpu", seed: int = 0) -> AblationResult:
    """Both ablation measurements at every layer (see the module docstring)."""
    size = SIZES[profile]
    emotions = [e for e in EMOTIONS if e in vecs.emotions][: size["emotions"]]
    if len(emotions) < 2:
        raise ValueError("ablation needs at least 2 fitted emotions among the feels set")
    layers = evenly_spaced(vecs.layers[:-1], size["layers"])
    drops, labels = reading_drops(model, vecs, layers, emotions, seed)
    _, report = feel_prompts(size["prompts"])
    common: dict[str, Any] = {"emotions": emotions, "layers": layers, "alphas": [1.0], "targets": emotions}
    ablated = sweep(model, vecs, report, intervention="ablate", **common)
    control = sweep(model, vecs, report, intervention="ablate", control="random", seed=seed, **common)
    (baseline,) = sweep(model, vecs, report, emotions[:1], layers[:1], [0.0], targets=emotions, progress=False)
    base = {w: np.asarray(baseline["target_logprob_by_prompt"][w]) for w in emotions}
    per_layer = []
    for layer in layers:

        def at(rows: list[dict[str, Any]], layer: int = layer) -> list[dict[str, Any]]:
            return [r for r in rows if r["layer"] == layer]

        estimates: dict[str, Any] = {c: drop_estimate(drops[c].get(layer, {}), labels, seed) for c in CONDITIONS}
        per_layer.append(
            {
                "layer": layer,
                "effect": _dict(estimates["emotion"]),
                "control": _dict(estimates["emotion_random"]),
                "valence": _dict(estimates["valence"]),
                "valence_control": _dict(estimates["valence_random"]),
                "feels": crossed_mean_ci(dominance_by_emotion(at(ablated), base, emotions), seed).to_dict(),
                "feels_control": crossed_mean_ci(dominance_by_emotion(at(control), base, emotions), seed).to_dict(),
            }
        )
    matrix = {c: [[_ratio(drops[c].get(a, {}).get(r)) for r in vecs.layers] for a in layers] for c in CONDITIONS}
    return AblationResult(str(model.cfg.model_name), profile, emotions, len(labels), per_layer, matrix)


def _dict(estimate: Estimate | None) -> dict[str, float | int] | None:
    return None if estimate is None else estimate.to_dict()


def _ratio(pairs: np.ndarray | None) -> float | None:
    if pairs is None:
        return None
    return round(float((pairs[0] - pairs[1]).mean() / max(np.abs(pairs[0]).mean(), 1e-9)), 4)


def render(page: Page, data: dict[str, Any]) -> None:
    """Per-layer reading drop beside random controls, the L x L' drop matrix, and the feels change."""
    import matplotlib.pyplot as plt

    page.heading("ablation: where removing an emotion direction removes the emotion downstream")
    page.paragraph(
        f"{len(data['emotions'])} emotions, {data['n_stories']} validation stories. Drop = mean(base - ablated) / "
        "mean(|base|) of each story's own-emotion reading at later layers (1 = gone, 0 = untouched), 95% CI "
        "resampling emotions; random directions of equal rank as controls."
    )
    rows = [r for r in data["per_layer"] if r["effect"] is not None]
    draw: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
        ("emotion direction", "o-", lambda r: r["effect"]),
        ("random direction", "s--", lambda r: r["control"]),
        ("valence axis", "^-", lambda r: r["valence"]),
        ("random (valence control)", "v--", lambda r: r["valence_control"]),
    ]
    figure, axis = plt.subplots(figsize=(7, 3))
    for label, style, get in draw:
        estimate_errorbar(axis, [r["layer"] for r in rows], [get(r) for r in rows], label, style)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel("ablated layer")
    axis.set_ylabel("reading drop downstream")
    axis.legend(fontsize=7)
    page.figure(figure, "Own-emotion reading drop at later layers after ablating at each layer")
    plt.close(figure)
    page.table(
        ["layer", "emotion dir.", "random", "valence axis", "random", "feels change", "random"],
        [
            (r["layer"], *(estimate_text(r[key]) for key in
                           ("effect", "control", "valence", "valence_control", "feels", "feels_control")))
            for r in rows
        ],
    )  # fmt: skip
    matrix = np.array([[np.nan if v is None else v for v in row] for row in data["drop_matrix"]["emotion"]])
    figure, axis = plt.subplots(figsize=(5, 4))
    image = axis.imshow(matrix, cmap="magma", vmin=0, vmax=max(1.0, float(np.nanmax(matrix))), aspect="auto")
    axis.set_xlabel("read layer")
    axis.set_yticks(range(len(data["per_layer"])), [str(r["layer"]) for r in data["per_layer"]])
    axis.set_ylabel("ablated layer")
    figure.colorbar(image, label="drop")
    page.figure(figure, "Drop of the own-emotion reading at each read layer (columns) per ablated layer (rows)")
    plt.close(figure)


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page summary at the deepest ablated layer: a fixed rule, so no layer is picked on these stories."""
    rows = [r for r in data["per_layer"] if r["effect"] is not None]
    best = rows[-1]
    return [
        (
            "ablation: downstream drop of the own-emotion reading (deepest ablated layer)",
            f"layer {best['layer']}: {estimate_text(best['effect'])} vs random {estimate_text(best['control'])}",
            "not reported in the study",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return experiment_main("ablation", run, argv, __doc__.splitlines()[0] if __doc__ else None)
