"""attribution: which attention heads and MLPs write each emotion's reading, and what removing them does.

At the reading layer (``vecs.default_layer``) each story's own-emotion reading (centred
projection of the window-mean ``hook_resid_post``) is split exactly into direct
contributions of the embedding, every head, attention bias and MLP of earlier layers
(:mod:`emolens.attribution`). For a few emotions spread over valence and arousal:

1. **Selection on training stories.** Components are ranked by their mean contribution
   on the emotion's *training* stories (the ones its direction was fitted on); the top
   heads are named with a bootstrap interval over those stories.
2. **Held-out check on validation stories.** The same components' contributions on the
   validation stories, and the per-layer *attribution mass* (share of the absolute direct
   contribution written by each layer's heads and MLP), intervals over validation stories.
3. **Ablation.** The top-k components (heads or MLPs) are mean-ablated (replaced by their
   mean over the training stories' window) on the validation stories and the drop of the
   reading, ``mean(base - ablated) / mean(|base|)``, is compared with k components drawn
   at random from the rest (several draws), intervals over validation stories.

The attention patterns of the top heads on a short example per emotion are kept for the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from emolens.attribution import (
    AblationMasks,
    Component,
    ablated_readings,
    component_means,
    components,
    direct_contributions,
    head_patterns,
    layer_shares,
)
from emolens.concepts import norms
from emolens.corpus import Story, load_stories
from emolens.experiments.attribution_page import headlines as headlines  # the experiment's report page
from emolens.experiments.attribution_page import render as render
from emolens.experiments.runner import experiment_main
from emolens.extract import batches, tokenize
from emolens.stats import Estimate, bootstrap, mean_ci
from emolens.vectors import EmotionVectors

#: Candidates in pick order: the first six spread over the valence x arousal quadrants.
EMOTIONS = (
    "happy", "calm", "sad", "afraid", "angry", "excited",
    "proud", "content", "lonely", "desperate", "hostile", "blissful",
)  # fmt: skip
SIZES: dict[str, dict[str, Any]] = {
    # quick cuts each story to its first ``chars`` characters (a smoke run, not a measurement)
    "quick": {"emotions": 3, "train": 2, "ks": [1, 3], "draws": 2, "heads": 2, "example_tokens": 24, "chars": 200},
    "cpu": {"emotions": 4, "train": 10, "ks": [1, 3, 10], "draws": 6, "heads": 3, "example_tokens": 40, "chars": None},
    "full": {
        "emotions": 12,
        "train": 10,
        "ks": [1, 3, 10, 30],
        "draws": 20,
        "heads": 4,
        "example_tokens": 48,
        "chars": None,
    },
}
TOP_COMPONENTS = 5


@dataclass
class AttributionResult:
    model: str
    profile: str
    read_layer: int
    window_start: int
    ablation: str  # "mean" or "zero"
    n_components: int
    decomposition_max_error: float  # max |sum of contributions - reading| over all stories
    reading_scale: float  # mean |reading| over all stories (to judge the error against)
    emotions: list[dict[str, Any]]  # per emotion: norms, named heads, top components
    ablation_by_k: list[dict[str, Any]]  # k, top, random, difference, random_draws, direct_share
    per_layer: list[dict[str, Any]]  # layer, mass, attn, mlp, direct
    embed_mass: dict[str, float | int]
    attention: list[dict[str, Any]]  # emotion, tokens, head_names, patterns [head][dst][src]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Attributed:
    """Direct contributions of a set of stories: ``values[story, component]`` and their readings."""

    labels: list[str]
    values: np.ndarray
    readings: np.ndarray


def pick_emotions(vecs: EmotionVectors, count: int) -> list[str]:
    """The first ``count`` of :data:`EMOTIONS` that were fitted (at least 2)."""
    chosen = [e for e in EMOTIONS if e in vecs.emotions][:count]
    if len(chosen) < 2:
        raise ValueError(f"attribution needs at least 2 fitted emotions among {', '.join(EMOTIONS)}")
    return chosen


def attribute(
    model: HookedTransformer,
    vecs: EmotionVectors,
    stories: Sequence[Story],
    window: int,
    layer: int,
    with_means: bool = False,
) -> tuple[Attributed, dict[str, torch.Tensor]]:
    """Contributions of every story (own emotion) and, if asked, the components' window means (mean ablation)."""
    labels, values, readings = [], [], []
    sums: dict[str, torch.Tensor] = {}
    total = 0.0
    for batch in batches(model, [s.text for s in stories], window_start=window):
        batch_labels = [stories[i].emotion for i in batch.indices]
        weights = batch.window.float()
        contributions, read = direct_contributions(model, vecs, batch.tokens, batch_labels, weights, layer)
        labels += batch_labels
        values.append(contributions.numpy())
        readings.append(read.numpy())
        if not with_means:
            continue
        count = float(weights.sum())
        for name, mean in component_means(model, batch.tokens, weights, layer).items():
            sums[name] = sums.get(name, torch.zeros_like(mean)) + mean * count
        total += count
    means = {name: value / max(total, 1.0) for name, value in sums.items()}
    return Attributed(labels, np.concatenate(values), np.concatenate(readings)), means


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    ablation: str = "mean",
) -> AttributionResult:
    """Attribution, held-out check and ablation against random components (see the module docstring)."""
    if ablation not in ("mean", "zero"):
        raise ValueError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    size = SIZES[profile]
    emotions = pick_emotions(vecs, size["emotions"])
    layer = vecs.default_layer
    window = int(vecs.metadata.get("window_start", 50))
    train_all = [_cut(s, size["chars"]) for s in load_stories(split="train") if s.emotion in emotions]
    train = [s for e in emotions for s in [x for x in train_all if x.emotion == e][: size["train"]]]
    validation = [_cut(s, size["chars"]) for s in load_stories(split="validation") if s.emotion in emotions]
    parts = components(model, layer)
    fitted, means = attribute(model, vecs, train, window, layer, with_means=ablation == "mean")
    held_out, _ = attribute(model, vecs, validation, window, layer)
    pool = [i for i, c in enumerate(parts) if c.ablatable]
    ranking = {e: _ranked(fitted, e, pool) for e in emotions}
    summaries = [_emotion_summary(e, parts, ranking[e], fitted, held_out, size["heads"], seed) for e in emotions]
    by_k = [
        _ablation_at(model, vecs, validation, window, layer, parts, ranking, pool, held_out, k, size["draws"],
                     means if ablation == "mean" else None, seed)
        for k in size["ks"] if k < len(pool)
    ]  # fmt: skip
    per_layer, embed_mass = _layer_mass(held_out, parts, layer, seed)
    both = np.concatenate([fitted.values.sum(1) - fitted.readings, held_out.values.sum(1) - held_out.readings])
    attention = [
        _attention_example(model, e, validation, [parts[i] for i in summary_heads(s)], size["example_tokens"])
        for e, s in zip(emotions, summaries, strict=True)
    ]
    return AttributionResult(
        model=str(model.cfg.model_name),
        profile=profile,
        read_layer=layer,
        window_start=window,
        ablation=ablation,
        n_components=len(parts),
        decomposition_max_error=float(np.abs(both).max()),
        reading_scale=float(np.abs(np.concatenate([fitted.readings, held_out.readings])).mean()),
        emotions=summaries,
        ablation_by_k=by_k,
        per_layer=per_layer,
        embed_mass=embed_mass,
        attention=attention,
    )


def _cut(story: Story, chars: int | None) -> Story:
    return story if chars is None else dataclasses.replace(story, text=story.text[:chars])


def _ranked(data: Attributed, emotion: str, pool: list[int]) -> list[int]:
    """Ablatable component indices, largest mean contribution to ``emotion`` first."""
    rows = np.array([label == emotion for label in data.labels])
    means = data.values[rows][:, pool].mean(axis=0)
    return [pool[i] for i in np.argsort(-means, kind="stable")]


def summary_heads(summary: dict[str, Any]) -> list[int]:
    return [h["index"] for h in summary["heads"]]


def _emotion_summary(
    emotion: str,
    parts: list[Component],
    ranking: list[int],
    fitted: Attributed,
    held_out: Attributed,
    n_heads: int,
    seed: int,
) -> dict[str, Any]:
    """Norms, the top heads (intervals over train and validation stories) and top components of ``emotion``."""
    train_rows = np.array([label == emotion for label in fitted.labels])
    val_rows = np.array([label == emotion for label in held_out.labels])

    def estimate(data: Attributed, rows: np.ndarray, index: int) -> dict[str, float | int]:
        return mean_ci(data.values[rows, index], seed).to_dict()

    heads = [i for i in ranking if parts[i].kind == "head"][:n_heads]
    norm = norms().get(emotion)
    return {
        "emotion": emotion,
        "valence": None if norm is None else norm.valence,
        "arousal": None if norm is None else norm.arousal,
        "n_train": int(train_rows.sum()),
        "n_validation": int(val_rows.sum()),
        "reading_train": mean_ci(fitted.readings[train_rows], seed).to_dict(),
        "reading_validation": mean_ci(held_out.readings[val_rows], seed).to_dict(),
        "heads": [
            {
                "name": parts[i].name,
                "index": i,
                "layer": parts[i].layer,
                "head": parts[i].head,
                "train": estimate(fitted, train_rows, i),
                "validation": estimate(held_out, val_rows, i),
            }
            for i in heads
        ],
        "top_components": [
            {
                "name": parts[i].name,
                "train": round(float(fitted.values[train_rows, i].mean()), 5),
                "validation": round(float(held_out.values[val_rows, i].mean()), 5),
            }
            for i in ranking[:TOP_COMPONENTS]
        ],
    }


def _drop_ratio(base: np.ndarray, ablated: np.ndarray, seed: int) -> Estimate:
    """``mean(base - ablated) / mean(|base|)`` with an interval resampling stories."""
    return bootstrap(lambda idx: float((base[idx] - ablated[idx]).mean() / max(np.abs(base[idx]).mean(), 1e-9)),
                     base.size, seed=seed)  # fmt: skip


def _ablation_at(
    model: HookedTransformer,
    vecs: EmotionVectors,
    stories: list[Story],
    window: int,
    layer: int,
    parts: list[Component],
    ranking: dict[str, list[int]],
    pool: list[int],
    held_out: Attributed,
    k: int,
    draws: int,
    means: dict[str, torch.Tensor] | None,
    seed: int,
) -> dict[str, Any]:
    """Reading drop when each story loses its emotion's top-k components vs k random others."""
    rng = np.random.default_rng([seed, k])
    top_parts: list[np.ndarray] = []
    random_parts: list[list[np.ndarray]] = [[] for _ in range(draws)]
    for batch in batches(model, [s.text for s in stories], window_start=window):
        labels = [stories[i].emotion for i in batch.indices]
        weights = batch.window.float()
        masks = AblationMasks.from_components(model, [[parts[i] for i in ranking[e][:k]] for e in labels])
        top_parts.append(ablated_readings(model, vecs, batch.tokens, labels, weights, masks, means, layer).numpy())
        for draw in range(draws):
            picks = []
            for e in labels:
                others = [i for i in pool if i not in ranking[e][:k]]
                picks.append([parts[i] for i in rng.choice(others, size=k, replace=False)])
            masks = AblationMasks.from_components(model, picks)
            readings = ablated_readings(model, vecs, batch.tokens, labels, weights, masks, means, layer)
            random_parts[draw].append(readings.numpy())
    # held_out was computed over the same batches in the same order: its rows align with these
    base = held_out.readings
    top = np.concatenate(top_parts)
    random_runs = np.stack([np.concatenate(p) for p in random_parts])  # draw x story
    random_mean = random_runs.mean(axis=0)
    direct = np.array([held_out.values[row, ranking[label][:k]].sum() for row, label in enumerate(held_out.labels)])
    scale = np.abs(base)

    def paired(idx: np.ndarray) -> float:
        denominator = max(float(np.abs(base[idx]).mean()), 1e-9)
        return float(((random_mean[idx] - top[idx]).mean()) / denominator)

    return {
        "k": k,
        "n_prompts": int(base.size),
        "top": _drop_ratio(base, top, seed).to_dict(),
        "random": _drop_ratio(base, random_mean, seed).to_dict(),
        "difference": bootstrap(paired, base.size, seed=seed).to_dict(),
        "random_draws": [round(float((base - r).mean() / max(np.abs(base).mean(), 1e-9)), 5) for r in random_runs],
        "direct_share": bootstrap(
            lambda idx: float(direct[idx].mean() / max(scale[idx].mean(), 1e-9)), base.size, seed=seed
        ).to_dict(),
    }


def _layer_mass(
    data: Attributed, parts: list[Component], layer: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float | int]]:
    """Per layer: share of the absolute direct contribution (heads + bias + MLP; attn and MLP apart), signed sum."""
    shares = layer_shares(data.values, parts, layer)
    rows = []
    for block in range(layer + 1):
        signed = data.values[:, [i for i, c in enumerate(parts) if c.layer == block]].sum(axis=1)
        estimates = {key: mean_ci(shares[key][:, block], seed).to_dict() for key in ("mass", "attn", "mlp")}
        rows.append({"layer": block, **estimates, "direct": mean_ci(signed, seed).to_dict()})
    return rows, mean_ci(shares["embed"][:, 0], seed).to_dict()


def _attention_example(
    model: HookedTransformer, emotion: str, stories: list[Story], heads: list[Component], max_tokens: int
) -> dict[str, Any]:
    """Tokens and attention patterns [head, dst, src] of ``heads`` on the start of one validation story."""
    story = next(s for s in stories if s.emotion == emotion)
    (ids,) = tokenize(model, [story.text])
    tokens = torch.tensor(ids[:max_tokens])
    return {
        "emotion": emotion,
        "tokens": [str(t) for t in model.to_str_tokens(tokens)],
        "head_names": [h.name for h in heads],
        "patterns": head_patterns(model, tokens, heads).numpy().round(4).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main("attribution", run, argv, __doc__.splitlines()[0] if __doc__ else None)
