"""Geometry of the emotion vectors: principal components against human valence and arousal.

Per layer, from the fitted vectors alone (no forward pass): PCA of the unit emotion
vectors (centred over emotions), the variance each component explains, Pearson and
Spearman correlations of PC1-PC3 scores with human valence and arousal ratings
(Warriner et al. 2013, :func:`emolens.concepts.norms`) with bootstrap 95% intervals over
emotions, and cross-validated linear axes (ridge regression from the vectors to the
rating, folds over emotions). At the default layer: k-means clusters named by members
and the emotion x emotion cosine matrix ordered by cluster. The study reports
PC1-valence r = 0.81 and PC2-arousal r = 0.66 on 45 shared emotions.

Principal-component signs are arbitrary; each PC is oriented so its scores have positive
skew (deterministic), so compare magnitudes with the study.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float
from scipy.stats import rankdata
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import norms
from emolens.files import atomic_write_text
from emolens.models import load_model
from emolens.stats import BOOTSTRAP_SAMPLES, Estimate, estimate_text
from emolens.validation import kmeans_labels, named_clusters
from emolens.vectors import EmotionVectors

STUDY = {"pc1_valence": 0.81, "pc2_arousal": 0.66}
TARGETS = ("valence", "arousal")
N_COMPONENTS = 10
N_CORRELATED = 3
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
CV_FOLDS = 10
MIN_RATED = 5


def principal_components(
    vectors: Float[Tensor, "emotion d_model"], k: int = N_COMPONENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (``emotion x k``) and explained-variance ratios (``k``) of the vectors centred over emotions."""
    data = vectors.double().numpy()
    centred = data - data.mean(axis=0)
    left, singular, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(k, singular.size)
    scores = left[:, :k] * singular[:k]
    skew = (scores**3).sum(axis=0)
    scores = scores * np.where(skew < 0, -1.0, 1.0)
    ratios = singular**2 / max(float((singular**2).sum()), 1e-30)
    return scores, ratios[:k]


def rated(emotions: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices of the emotions with both valence and arousal ratings, and those ratings."""
    table = norms()
    index = [
        i
        for i, e in enumerate(emotions)
        if e in table and table[e].valence is not None and table[e].arousal is not None
    ]
    ratings = {t: np.array([getattr(table[emotions[i]], t) for i in index], dtype=float) for t in TARGETS}
    return np.array(index, dtype=int), ratings


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``x`` with the same row of ``y`` (NaN for a constant row)."""
    a = x - x.mean(axis=1, keepdims=True)
    b = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def correlation(x: np.ndarray, y: np.ndarray, method: str = "pearson", seed: int = 0) -> Estimate:
    """Pearson or Spearman r over units with a 95% bootstrap interval over units.

    The same interval as :func:`emolens.stats.correlation_ci` (percentile of
    ``BOOTSTRAP_SAMPLES`` resamples, widened to contain the estimate), computed for all
    resamples at once: the experiments need hundreds of these per model.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"x and y must be paired 1-d arrays of >= 2 units, got shapes {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    draws = np.vstack([np.arange(a.size), rng.integers(0, a.size, (BOOTSTRAP_SAMPLES, a.size))])
    xs, ys = a[draws], b[draws]
    if method == "spearman":
        xs, ys = rankdata(xs, axis=1), rankdata(ys, axis=1)
    values = _row_pearson(xs, ys)
    value, resampled = float(values[0]), values[1:][np.isfinite(values[1:])]
    if not np.isfinite(value) or resampled.size == 0:
        raise ValueError("correlation undefined: one of the variables is constant over the units")
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Estimate(round(value, 6), round(min(float(low), value), 6), round(max(float(high), value), 6), a.size)


def cross_validated_axis(
    features: np.ndarray, target: np.ndarray, folds: int = CV_FOLDS, seed: int = 0
) -> tuple[Estimate, np.ndarray]:
    """Out-of-fold ridge predictions of ``target`` from ``features`` (rows = emotions) and their r.

    The ridge penalty is chosen inside each training fold (efficient leave-one-out).
    The interval resamples emotions over the out-of-fold (prediction, rating) pairs, so it
    does not include the variability of refitting.
    """
    from sklearn.linear_model import RidgeCV

    n = len(target)
    folds = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % folds
    predicted = np.empty(n)
    for fold in range(folds):
        test = fold_of == fold
        model = RidgeCV(alphas=RIDGE_ALPHAS).fit(features[~test], target[~test])
        predicted[test] = model.predict(features[test])
    return correlation(predicted, target, seed=seed), predicted


@dataclass
class LayerGeometry:
    layer: int
    explained: list[float]  # variance ratio of PC1..PC10
    correlations: dict[str, dict[str, dict[str, dict[str, float | int]]]]  # PCk -> target -> method -> Estimate
    cv_axes: dict[str, dict[str, float | int]]  # target -> Estimate of r(out-of-fold prediction, rating)


def layer_geometry(
    vectors: Float[Tensor, "emotion d_model"], emotions: list[str], layer: int, seed: int = 0, spearman: bool = True
) -> LayerGeometry:
    """PCA variance, PC1-3 vs valence/arousal (with CIs) and cross-validated axes for one layer's vectors."""
    index, ratings = rated(emotions)
    if index.size < MIN_RATED:
        raise ValueError(f"only {index.size} fitted emotions have human ratings; fit at least {MIN_RATED} rated ones")
    scores, ratios = principal_components(vectors)
    methods = ("pearson", "spearman") if spearman else ("pearson",)
    correlations = {
        f"PC{k + 1}": {
            t: {m: correlation(scores[index, k], ratings[t], m, seed).to_dict() for m in methods} for t in TARGETS
        }
        for k in range(min(N_CORRELATED, scores.shape[1]))
    }
    features = vectors.double().numpy()[index]
    cv_axes = {t: cross_validated_axis(features, ratings[t], seed=seed)[0].to_dict() for t in TARGETS}
    return LayerGeometry(layer, [round(float(r), 6) for r in ratios], correlations, cv_axes)


@dataclass
class GeometryResult:
    model: str
    method: str | None
    emotions: list[str]
    n_rated: int
    default_layer: int
    study: dict[str, float]
    per_layer: list[LayerGeometry]
    clusters: dict[str, list[str]]  # k-means at the default layer, named by the member closest to the centroid
    cluster_order: list[str]  # emotions ordered by cluster, then by cosine to the cluster centroid
    cosine: list[list[float]]  # default-layer cosine matrix in ``cluster_order``
    pc_scores: dict[str, list[float]] = field(default_factory=dict)  # default layer, PC1/PC2 per emotion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cluster_order(vectors: Float[Tensor, "emotion d_model"], seed: int = 0) -> list[int]:
    """Emotion indices grouped by k-means cluster (largest first), each group by closeness to its centroid."""
    labels = kmeans_labels(vectors, seed=seed)
    order: list[int] = []
    for cluster in sorted(set(labels.tolist()), key=lambda c: (-(labels == c).sum(), c)):
        members = np.flatnonzero(labels == cluster)
        centroid = vectors[members].mean(dim=0)
        closeness = (vectors[members] @ centroid).numpy()
        order += [int(members[i]) for i in np.argsort(-closeness)]
    return order


def run(
    model: HookedTransformer | None, vecs: EmotionVectors, profile: str = "cpu", seed: int = 0, **kwargs: Any
) -> GeometryResult:
    """Geometry of ``vecs`` per layer (``quick``: first, default and last layer; else all layers).

    Needs no forward pass; ``model`` is accepted for the common experiment signature.
    """
    if profile not in ("quick", "cpu", "full"):
        raise ValueError(f"profile must be quick|cpu|full, got {profile!r}")
    if model is not None:
        vecs.check_model(model)
    layers = vecs.layers if profile != "quick" else sorted({vecs.layers[0], vecs.default_layer, vecs.layers[-1]})
    per_layer = [layer_geometry(vecs.vectors[vecs.layer_index(layer)], vecs.emotions, layer, seed) for layer in layers]
    default_vectors = vecs.vectors[vecs.layer_index(None)].float()
    order = cluster_order(default_vectors, seed)
    unit = default_vectors / default_vectors.norm(dim=-1, keepdim=True)
    cosine = (unit[order] @ unit[order].T).numpy()
    scores, _ = principal_components(default_vectors)
    index, _ = rated(vecs.emotions)
    return GeometryResult(
        model=str(vecs.metadata.get("model", {}).get("model_name", "unknown")),
        method=vecs.metadata.get("method"),
        emotions=list(vecs.emotions),
        n_rated=int(index.size),
        default_layer=vecs.default_layer,
        study=STUDY,
        per_layer=per_layer,
        clusters=named_clusters(vecs),
        cluster_order=[vecs.emotions[i] for i in order],
        cosine=np.round(cosine, 4).tolist(),
        pc_scores={f"PC{k + 1}": np.round(scores[:, k], 5).tolist() for k in range(min(2, scores.shape[1]))},
    )


def render(page: Any, data: dict[str, Any]) -> None:
    """Tables of PC variance and correlations per layer, the cosine heatmap, the PC1/PC2 scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page.heading("Geometry: principal components against human valence and arousal")
    page.paragraph(
        f"{len(data['emotions'])} emotion vectors, {data['n_rated']} with human ratings (Warriner et al. 2013). "
        f"Study: PC1-valence r = {data['study']['pc1_valence']}, PC2-arousal r = {data['study']['pc2_arousal']}. "
        "Brackets: bootstrap 95% intervals over emotions. PC signs are arbitrary (oriented to positive skew). "
        "CV axis: r of 10-fold out-of-fold ridge predictions (folds over emotions)."
    )
    rows = []
    for entry in data["per_layer"]:
        c = entry["correlations"]
        rows.append(
            [
                entry["layer"],
                " / ".join(f"{100 * r:.0f}" for r in entry["explained"][:3]),
                *(estimate_text(c[pc][t]["pearson"], 2) for pc in ("PC1", "PC2", "PC3") if pc in c for t in TARGETS),
                estimate_text(entry["cv_axes"]["valence"], 2),
                estimate_text(entry["cv_axes"]["arousal"], 2),
            ]
        )
    n_pcs = min(N_CORRELATED, len(data["per_layer"][0]["correlations"]))
    header = ["layer", "% var PC1/2/3"]
    header += [f"PC{k + 1} {t[:3]}" for k in range(n_pcs) for t in TARGETS] + ["CV valence", "CV arousal"]
    page.table(header, rows)

    names, cosine = data["cluster_order"], np.array(data["cosine"])
    size = max(4.0, len(names) * 0.075)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(cosine, vmin=-1, vmax=1, cmap="RdBu_r")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=4 if len(names) > 40 else 8)
    axis.set_yticks(range(len(names)), names, fontsize=4 if len(names) > 40 else 8)
    figure.colorbar(image, ax=axis, fraction=0.03)
    page.figure(figure, f"Cosine between emotion vectors at layer {data['default_layer']}, ordered by k-means cluster")
    plt.close(figure)

    page.table(["cluster", "members"], [[name, ", ".join(members)] for name, members in data["clusters"].items()])

    if "PC2" in data["pc_scores"]:
        table = norms()
        labels = data["emotions"]
        valence = np.array([table[e].valence if e in table else None for e in labels], dtype=float)
        pc1, pc2 = np.array(data["pc_scores"]["PC1"]), np.array(data["pc_scores"]["PC2"])
        figure, axis = plt.subplots(figsize=(6, 5))
        points = axis.scatter(pc1, pc2, c=valence, cmap="coolwarm", s=12)
        for i, name in enumerate(labels):
            axis.annotate(name, (pc1[i], pc2[i]), fontsize=4)
        figure.colorbar(points, ax=axis, label="human valence (grey: unrated)")
        axis.set_xlabel("PC1")
        axis.set_ylabel("PC2")
        page.figure(figure, f"Emotion vectors at layer {data['default_layer']} on PC1 and PC2")
        plt.close(figure)


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page rows at the default layer: PC1-valence, PC2-arousal, cross-validated valence axis."""
    row = next(r for r in data["per_layer"] if r["layer"] == data["default_layer"])
    layer, pc = data["default_layer"], row["correlations"]
    return [
        (f"PC1 vs human valence, r (layer {layer})", estimate_text(pc["PC1"]["valence"]["pearson"], 2), "0.81"),
        (f"PC2 vs human arousal, r (layer {layer})", estimate_text(pc["PC2"]["arousal"]["pearson"], 2), "0.66"),
        (f"valence, cross-validated ridge axis r (layer {layer})", estimate_text(row["cv_axes"]["valence"], 2), ""),
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.geometry --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--vectors", type=Path, default=None)
    parser.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / args.model
    path = args.vectors or out / "vectors.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: fit vectors first with `emolens fit --model {args.model}`")
    vecs = EmotionVectors.load(path)
    result = run(load_model(args.model), vecs, args.profile, args.seed)
    target = out / "results" / "geometry.json"
    atomic_write_text(target, json.dumps(result.to_dict(), indent=1))
    best = next(g for g in result.per_layer if g.layer == result.default_layer)
    print(
        f"layer {best.layer}: PC1-valence r {best.correlations['PC1']['valence']['pearson']['value']:+.2f}, "
        f"PC2-arousal r {best.correlations['PC2']['arousal']['pearson']['value']:+.2f}, "
        f"CV valence r {best.cv_axes['valence']['value']:+.2f} (study 0.81 / 0.66); wrote {target}"
    )
