"""Which fitting choices make the emotion geometry measure feeling rather than story form.

Works on the activation cache (:mod:`emolens.experiments.activation_cache`): every
variant below is linear algebra on the cached story means and neutral moments, so the
study never refits through the model.

A variant is the study's recipe (emotion means of training stories minus their mean,
neutral top-PC subspace projected out, unit norm) with these choices:

- ``neutral``: which covariance defines the denoising subspace: a neutral set's token
  covariance (``neutral`` = packaged dialogues/expository, ``narrative`` = neutral
  narrative paragraphs, ``both`` = pooled), ``within`` = the training stories' own
  covariance around their emotion's mean (topic, form and story noise), or ``none``;
  and ``denoise_variance``;
- ``form``: project out story-form directions, estimated by regressing the training
  story means on their form features (:mod:`emolens.style`) *within* emotions (so the
  directions are not the emotions' own);
- ``topic``: remove topic effects (two-way fixed effects, story = emotion + topic);
- ``balance``: each emotion's mean weighs its first- and third-person stories equally;
- ``form_between``: regress the emotion vectors on their emotions' mean form across
  emotions and keep the residuals (removes form-correlated variance wholesale, feeling included).

**Selection uses training stories only and never the human ratings**: among variants
whose 5-fold cross-validated top-1 accuracy on the training stories (default layer) is
within ``ACCURACY_TOLERANCE`` of the study recipe, the one whose top-3 principal
components are least explained by story form (cross-validated R^2 over emotions,
weighted by variance) is chosen (``form_between`` variants are diagnostics only: they
zero that criterion by construction). Valence/arousal and held-out validation accuracy are
then reported for the recipe and the chosen variant (and for every variant, so nothing
is hidden).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from emolens.concepts import emotions as all_emotions
from emolens.corpus import load_stories
from emolens.experiments.activation_cache import load_neutral_moments, load_story_means, pool_moments
from emolens.experiments.geometry import TARGETS, correlation, cross_validated_axis, principal_components, rated
from emolens.extract import TokenMoments
from emolens.files import atomic_write_text
from emolens.fit import neutral_subspace, project_out
from emolens.stats import bootstrap
from emolens.style import FORM_FEATURES, explained_by_form, form_matrix, group_means, standardise
from emolens.validation import ranks_of_truth
from emolens.vectors import default_layer_for

ACCURACY_TOLERANCE = 0.01
TRAIN_FOLDS = 5
TOPIC_ITERATIONS = 20


@dataclass(frozen=True)
class Variant:
    neutral: str = "neutral"  # neutral | narrative | both | none
    denoise_variance: float = 0.5
    form: bool = False
    topic: bool = False
    balance: bool = False
    form_between: bool = False

    @property
    def name(self) -> str:
        parts = [f"{self.neutral}@{self.denoise_variance:g}" if self.neutral != "none" else "no-denoise"]
        parts += [flag for flag in ("form", "topic", "balance", "form_between") if getattr(self, flag)]
        return "+".join(parts)


RECIPE = Variant()


@dataclass
class StudyData:
    """Cached story means with everything a variant needs."""

    means: Float[Tensor, "story layer d_model"]
    labels: np.ndarray  # emotion index per story
    train: np.ndarray  # bool per story
    first_person: np.ndarray  # bool per story
    topics: np.ndarray  # topic id per story
    forms: np.ndarray  # story x feature
    fold: np.ndarray  # train-CV fold per story (-1 for validation stories)
    half: np.ndarray  # 0/1 alternating within each emotion's training stories (split-half reliability)
    neutral: dict[str, TokenMoments]
    emotions: list[str]
    n_layers: int


def load_study_data(cache: Path, neutral_sets: list[str]) -> StudyData:
    stories = load_stories()
    cached = load_story_means(cache)
    emotions = list(all_emotions())
    labels = np.array([emotions.index(s.emotion) for s in stories])
    train = np.array([s.split == "train" for s in stories])
    fold, half = np.full(len(stories), -1), np.full(len(stories), -1)
    seen: dict[int, int] = {}
    for i in np.flatnonzero(train):
        fold[i], half[i] = seen.get(labels[i], 0) % TRAIN_FOLDS, seen.get(labels[i], 0) % 2
        seen[labels[i]] = seen.get(labels[i], 0) + 1
    moments = {name: load_neutral_moments(cache, name) for name in neutral_sets}
    if {"neutral", "narrative"} <= moments.keys():
        moments["both"] = pool_moments([moments["neutral"], moments["narrative"]])
    return StudyData(
        means=cached.means.float(),
        labels=labels,
        train=train,
        first_person=np.array([s.person == "first" for s in stories]),
        topics=np.array([s.topic_id for s in stories]),
        forms=form_matrix([s.text for s in stories]),
        fold=fold,
        half=half,
        neutral=moments,
        emotions=emotions,
        n_layers=cached.means.shape[1],
    )


def _group_mean(x: Float[Tensor, "story layer d_model"], groups: np.ndarray, n_groups: int) -> Tensor:
    """``group x layer x d_model`` mean of the stories in each group (zero for an empty group)."""
    rows = torch.from_numpy(np.asarray(groups)).long()
    indices = torch.stack([rows, torch.arange(len(rows))])
    counts = torch.bincount(rows, minlength=n_groups).clamp(min=1).to(x.dtype)
    weights = torch.sparse_coo_tensor(indices, 1 / counts[rows], (n_groups, len(rows)), check_invariants=True)
    flat = einops.rearrange(x, "story layer d -> story (layer d)")
    means = torch.sparse.mm(weights, flat)
    return einops.rearrange(means, "group (layer d) -> group layer d", layer=x.shape[1])


def topic_adjusted(
    x: Float[Tensor, "story layer d_model"], labels: np.ndarray, topics: np.ndarray, n_emotions: int
) -> Float[Tensor, "story layer d_model"]:
    """Story means minus their topic effects, from ``story = emotion + topic`` fitted by alternating means."""
    n_topics = int(topics.max()) + 1
    topic_effect = torch.zeros(n_topics, *x.shape[1:])
    for _ in range(TOPIC_ITERATIONS):
        emotion_effect = _group_mean(x - topic_effect[topics], labels, n_emotions)
        topic_effect = _group_mean(x - emotion_effect[labels], topics, n_topics)
        topic_effect -= topic_effect[topics].mean(dim=0, keepdim=True)
    return x - topic_effect[topics]


def form_basis(
    x: Float[Tensor, "story layer d_model"], forms: np.ndarray, labels: np.ndarray, n_emotions: int
) -> Float[Tensor, "layer d_model feature"]:
    """Per layer, orthonormal directions along which story means move with their form, within emotions."""
    centred_x = x - _group_mean(x, labels, n_emotions)[labels]
    f = standardise(forms - group_means(forms, labels, n_emotions)[labels])
    pinv = torch.from_numpy(np.linalg.pinv(f)).float()  # feature x story
    coefficients = einops.einsum(pinv, centred_x, "feature story, story layer d -> layer d feature")
    basis, _ = torch.linalg.qr(coefficients)
    return basis


def regress_out_between(
    raw: Float[Tensor, "layer emotion d_model"], emotion_forms: np.ndarray
) -> Float[Tensor, "layer emotion d_model"]:
    """Residuals of the emotion vectors after least squares on their emotions' mean form (across emotions).

    Stronger than ``form``: it also removes whatever feeling covaries with form across emotions.
    """
    design = np.column_stack([np.ones(len(emotion_forms)), standardise(emotion_forms)])
    hat = torch.from_numpy(design @ np.linalg.pinv(design)).float()  # emotion x emotion projection
    return raw - einops.einsum(hat, raw, "e1 e2, layer e2 d -> layer e1 d")


def within_covariance(
    x: Float[Tensor, "story layer d_model"], labels: np.ndarray, n_emotions: int
) -> Float[Tensor, "layer d_model d_model"]:
    """Per layer, the covariance of story means around their emotion's mean (topic, form, noise)."""
    residual = x - _group_mean(x, labels, n_emotions)[labels]
    scatter = einops.einsum(residual, residual, "story layer i, story layer j -> layer i j")
    return scatter / max(1, len(labels) - n_emotions)


def split_half_reliability(data: StudyData, variant: Variant) -> list[float]:
    """Per layer, r between the cosine matrices (upper triangles) fitted on two halves of the training stories."""
    halves = [fit_variant(data, variant, data.train & (data.half == h))[0] for h in (0, 1)]
    upper = torch.triu_indices(len(data.emotions), len(data.emotions), offset=1)
    out = []
    for layer in range(data.n_layers):
        a, b = (einops.einsum(v[layer], v[layer], "e1 d, e2 d -> e1 e2")[upper[0], upper[1]] for v in halves)
        out.append(round(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), 4))
    return out


def fit_variant(
    data: StudyData, variant: Variant, mask: np.ndarray
) -> tuple[Float[Tensor, "layer emotion d_model"], Float[Tensor, "layer d_model"]]:
    """Unit emotion vectors and reading centre from the stories in ``mask`` under ``variant``."""
    x, labels, n = data.means[mask], data.labels[mask], len(data.emotions)
    center = _group_mean(x, labels, n).mean(dim=0)
    if variant.topic:
        x = topic_adjusted(x, labels, data.topics[mask], n)
    if variant.balance:
        person = data.first_person[mask]
        means = (_group_mean(x[person], labels[person], n) + _group_mean(x[~person], labels[~person], n)) / 2
    else:
        means = _group_mean(x, labels, n)
    raw = einops.rearrange(means - means.mean(dim=0, keepdim=True), "emotion layer d -> layer emotion d")
    if variant.form_between:
        raw = regress_out_between(raw, group_means(data.forms[mask], labels, n))
    if variant.form:
        basis = form_basis(x, data.forms[mask], labels, n)
        raw = project_out(raw, list(basis))
    if variant.neutral == "within" and variant.denoise_variance > 0:
        raw = project_out(raw, neutral_subspace(within_covariance(x, labels, n), variant.denoise_variance))
    elif variant.neutral != "none" and variant.denoise_variance > 0:
        raw = project_out(raw, neutral_subspace(data.neutral[variant.neutral].covariance, variant.denoise_variance))
    return raw / raw.norm(dim=-1, keepdim=True), center


def accuracy(
    vectors: Float[Tensor, "layer emotion d_model"],
    center: Float[Tensor, "layer d_model"],
    x: Tensor,
    truth: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, top-1 and top-5 hits (``layer x story``) of held-out story means ``x`` (story layer d)."""
    scores = einops.einsum(x - center, vectors, "story layer d, layer emotion d -> layer story emotion")
    ranks = torch.stack([ranks_of_truth(layer_scores, torch.from_numpy(truth)) for layer_scores in scores]).numpy()
    return ranks == 0, ranks < 5


def train_cv_accuracy(data: StudyData, variant: Variant) -> np.ndarray:
    """Per layer, top-1 accuracy on training stories, 5 folds (2 stories per emotion held out each time)."""
    hits = []
    for fold in range(TRAIN_FOLDS):
        held = data.fold == fold
        vectors, center = fit_variant(data, variant, data.train & ~held)
        top1, _ = accuracy(vectors, center, data.means[held], data.labels[held])
        hits.append(top1)
    return np.concatenate(hits, axis=1).mean(axis=1)


def form_share(vectors: Float[Tensor, "emotion d_model"], emotion_forms: np.ndarray) -> tuple[float, list[float]]:
    """Variance-weighted cross-validated R^2 of PC1-3 from the emotions' form (and each PC's R^2)."""
    scores, ratios = principal_components(vectors, k=3)
    r2 = [fit.r2_cv for fit in explained_by_form(emotion_forms, scores)]
    share = float(sum(max(0.0, r) * w for r, w in zip(r2, ratios, strict=True)) / ratios.sum())
    return share, [round(r, 4) for r in r2]


def summarise_variant(data: StudyData, variant: Variant, layers: list[int]) -> dict[str, Any]:
    """Point values per layer: PC variance, PC1-3 vs ratings, CV axes, form share, train-CV top-1."""
    vectors, _ = fit_variant(data, variant, data.train)
    train_forms = group_means(data.forms[data.train], data.labels[data.train], len(data.emotions))
    index, ratings = rated(data.emotions)
    cv_top1 = train_cv_accuracy(data, variant)
    rows = []
    for layer in layers:
        scores, ratios = principal_components(vectors[layer])
        share, r2 = form_share(vectors[layer], train_forms)
        features = vectors[layer].double().numpy()[index]
        rows.append(
            {
                "layer": layer,
                "explained": [round(float(r), 4) for r in ratios[:3]],
                "pc_r": {
                    f"PC{k + 1}": {t: round(float(np.corrcoef(scores[index, k], ratings[t])[0, 1]), 4) for t in TARGETS}
                    for k in range(3)
                },
                "cv_axis_r": {t: round(cross_validated_axis(features, ratings[t])[0].value, 4) for t in TARGETS},
                "form_share": round(share, 4),
                "form_r2_cv": r2,
                "train_cv_top1": round(float(cv_top1[layer]), 4),
            }
        )
    return {"variant": variant.name, "settings": asdict(variant), "per_layer": rows}


def choose(summaries: list[dict[str, Any]], default_layer: int) -> dict[str, Any]:
    """The least form-explained variant whose train-CV top-1 stays within tolerance of the recipe's.

    ``form_between`` variants are diagnostics, not candidates: they remove exactly what the
    criterion measures (form-correlated variance across emotions), so they would win by construction.
    """

    def at_default(summary: dict[str, Any]) -> dict[str, Any]:
        return next(row for row in summary["per_layer"] if row["layer"] == default_layer)

    recipe = next(s for s in summaries if s["variant"] == RECIPE.name)
    floor = at_default(recipe)["train_cv_top1"] - ACCURACY_TOLERANCE
    eligible = [
        s for s in summaries if at_default(s)["train_cv_top1"] >= floor and not s["settings"].get("form_between", False)
    ]
    return min(eligible, key=lambda s: (at_default(s)["form_share"], -at_default(s)["train_cv_top1"]))


def full_report(data: StudyData, variant: Variant, seed: int = 0) -> dict[str, Any]:
    """Per layer, with CIs over emotions: PC1-3 vs ratings, CV axes, and held-out validation accuracy."""
    from emolens.experiments.geometry import layer_geometry

    vectors, center = fit_variant(data, variant, data.train)
    held = ~data.train
    top1, top5 = accuracy(vectors, center, data.means[held], data.labels[held])
    held_labels = data.labels[held]
    emotions_held = np.unique(held_labels)

    def per_emotion_mean(hits: np.ndarray) -> Any:
        by_emotion = np.array([hits[held_labels == e].mean() for e in emotions_held])
        return bootstrap(lambda idx: float(by_emotion[idx].mean()), by_emotion.size, seed=seed).to_dict()

    reliability = split_half_reliability(data, variant)
    rows = []
    for layer in tqdm(range(data.n_layers), desc=variant.name, unit="layer"):
        geometry = asdict(layer_geometry(vectors[layer], data.emotions, layer, seed))
        geometry["split_half_cosine_r"] = reliability[layer]
        geometry["validation_top1"] = per_emotion_mean(top1[layer])
        geometry["validation_top5"] = per_emotion_mean(top5[layer])
        rows.append(geometry)
    return {"variant": variant.name, "settings": asdict(variant), "per_layer": rows}


def form_analysis(data: StudyData, layers: list[int]) -> dict[str, Any]:
    """The stories' form per emotion and how much of each recipe PC it explains (with correlations)."""
    n = len(data.emotions)
    emotion_forms = group_means(data.forms[data.train], data.labels[data.train], n)
    vectors, _ = fit_variant(data, RECIPE, data.train)
    index, ratings = rated(data.emotions)
    per_layer = []
    for layer in layers:
        scores, _ = principal_components(vectors[layer], k=3)
        fits = explained_by_form(emotion_forms, scores)
        per_layer.append(
            {
                "layer": layer,
                **{
                    f"PC{k + 1}": {
                        "r2": round(fit.r2, 4),
                        "r2_cv": round(fit.r2_cv, 4),
                        "r": {f: round(v, 3) for f, v in fit.correlations.items()},
                    }
                    for k, fit in enumerate(fits)
                },
            }
        )
    return {
        "features": list(FORM_FEATURES),
        "per_emotion": {e: np.round(emotion_forms[i], 4).tolist() for i, e in enumerate(data.emotions)},
        "across_emotions_sd": np.round(emotion_forms.std(axis=0), 4).tolist(),
        "vs_ratings": {
            t: {f: correlation(emotion_forms[index, j], ratings[t]).to_dict() for j, f in enumerate(FORM_FEATURES)}
            for t in TARGETS
        },
        "per_layer": per_layer,
    }


VARIANTS = [
    RECIPE,
    Variant("none", 0.0),
    *[Variant("neutral", f) for f in (0.3, 0.7, 0.9)],
    *[Variant(n, f) for n in ("narrative", "both") for f in (0.3, 0.5, 0.7, 0.9)],
    *[Variant(n, f, form=True) for n, f in (("neutral", 0.5), ("none", 0.0), ("narrative", 0.5), ("both", 0.5))],
    *[Variant(n, f, topic=True) for n, f in (("neutral", 0.5), ("both", 0.5))],
    *[Variant(n, f, balance=True) for n, f in (("neutral", 0.5), ("both", 0.5))],
    Variant("both", 0.5, form=True, topic=True, balance=True),
    *[Variant(n, 0.5, form_between=True) for n in ("neutral", "both")],
    *[Variant("within", f) for f in (0.3, 0.5, 0.7)],
    Variant("within", 0.5, topic=True, balance=True),
    Variant("neutral", 0.5, form=True, topic=True, balance=True),
]


def run_study(
    cache: Path, neutral_sets: list[str], seed: int = 0, variants: list[Variant] | None = None
) -> dict[str, Any]:
    """Summaries of every variant (default :data:`VARIANTS` whose neutral set is cached), the choice, before/after."""
    data = load_study_data(cache, neutral_sets)
    default_layer = default_layer_for(data.n_layers)
    variants = [v for v in (variants or VARIANTS) if v.neutral in {"none", "within", *data.neutral}]
    layers = list(range(data.n_layers))
    summaries = [summarise_variant(data, v, layers) for v in tqdm(variants, desc="variants", unit="variant")]
    chosen = choose(summaries, default_layer)
    chosen_variant = Variant(**chosen["settings"])
    return {
        "default_layer": default_layer,
        "selection_rule": (
            f"default layer {default_layer}: lowest form share of PC1-3 among variants whose train-CV top-1 "
            f"is >= the recipe's - {ACCURACY_TOLERANCE}; human ratings and validation stories not used"
        ),
        "chosen": chosen["variant"],
        "form": form_analysis(data, layers),
        "variants": summaries,
        "before": full_report(data, RECIPE, seed),
        "after": full_report(data, chosen_variant, seed),
    }


def _ci(estimate: dict[str, Any]) -> str:
    return f"{estimate['value']:+.2f} [{estimate['low']:+.2f}, {estimate['high']:+.2f}]"


def markdown(result: dict[str, Any]) -> str:
    """The study's tables for docs/results.md: form vs PCs, every variant, before/after per layer."""
    layer = result["default_layer"]
    lines = [f"Chosen: `{result['chosen']}` ({result['selection_rule']}).", ""]
    form = next(row for row in result["form"]["per_layer"] if row["layer"] == layer)
    lines += [f"Story form vs the recipe's PCs at layer {layer} (R^2 over 171 emotions; r of each feature):", ""]
    lines += ["| PC | R^2 | CV R^2 | " + " | ".join(result["form"]["features"]) + " |"]
    lines += ["|---" * (3 + len(result["form"]["features"])) + "|"]
    for pc in ("PC1", "PC2", "PC3"):
        r = form[pc]["r"]
        lines += [
            f"| {pc} | {form[pc]['r2']:.2f} | {form[pc]['r2_cv']:.2f} | "
            + " | ".join(f"{r[f]:+.2f}" for f in result["form"]["features"])
            + " |"
        ]
    lines += ["", f"Every variant at layer {layer} (point values; train-CV = 5-fold on training stories):", ""]
    lines += [
        "| variant | % var PC1/2/3 | PC1-val r | PC2-aro r | max abs r(PC1-3, val) | CV val r | CV aro r "
        "| form share | train-CV top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in result["variants"]:
        row = next(r for r in summary["per_layer"] if r["layer"] == layer)
        pcs = row["pc_r"]
        best = max(abs(pcs[pc]["valence"]) for pc in pcs)
        lines += [
            f"| {summary['variant']} | {' / '.join(f'{100 * x:.0f}' for x in row['explained'])} "
            f"| {pcs['PC1']['valence']:+.2f} | {pcs['PC2']['arousal']:+.2f} | {best:.2f} "
            f"| {row['cv_axis_r']['valence']:.2f} | {row['cv_axis_r']['arousal']:.2f} | {row['form_share']:.2f} "
            f"| {row['train_cv_top1']:.3f} |"
        ]
    for key in ("before", "after"):
        report = result[key]
        lines += ["", f"**{key}** (`{report['variant']}`), per layer, 95% bootstrap CIs over emotions:", ""]
        lines += [
            "| layer | % var PC1/2/3 | PC1-val r | PC1-val Spearman | PC2-aro r | PC3-val r | CV val r | CV aro r "
            "| val. top-1 | val. top-5 | split-half r |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in report["per_layer"]:
            c = row["correlations"]
            lines += [
                f"| {row['layer']} | {' / '.join(f'{100 * x:.0f}' for x in row['explained'][:3])} "
                f"| {_ci(c['PC1']['valence']['pearson'])} | {_ci(c['PC1']['valence']['spearman'])} "
                f"| {_ci(c['PC2']['arousal']['pearson'])} | {_ci(c['PC3']['valence']['pearson'])} "
                f"| {_ci(row['cv_axes']['valence'])} | {_ci(row['cv_axes']['arousal'])} "
                f"| {_ci(row['validation_top1'])} | {row['validation_top5']['value']:.2f} "
                f"| {row['split_half_cosine_r']:.2f} |"
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--sets", nargs="*", default=["neutral", "narrative"])
    parser.add_argument("--markdown", action="store_true", help="print the tables of an existing result and exit")
    args = parser.parse_args(argv)
    out = args.runs / args.model
    if args.markdown:
        print(markdown(json.loads((out / "results" / "geometry_study.json").read_text())))
        return
    result = run_study(out / "cache", args.sets)
    target = out / "results" / "geometry_study.json"
    atomic_write_text(target, json.dumps(result, indent=1))
    print(f"chosen: {result['chosen']}; wrote {target}")


if __name__ == "__main__":
    main()
