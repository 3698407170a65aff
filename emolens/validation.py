"""Where the emotion directions form: held-out accuracy per layer, clusters, layer similarity, logit lens.

A held-out story is classified by the emotion with the highest window-mean reading
(:mod:`emolens.readout`: the fitting window; raw projections by default, because the
neutral-text calibration lowers accuracy on long stories; the result says which). Per
layer: top-1 and top-5 accuracy over all
fitted emotions and accuracy over k-means clusters of that layer's vectors, each beside
its chance level; intervals are bootstrap 95% over *emotions* (each has two held-out
stories, which are not independent). The best layer is chosen where the held-out split
cannot have influenced it: by the cross-validation on training stories that the fit
records (``metadata["layer_selection"]``), else on the first held-out story of each
emotion, and its accuracy is then reported on the other stories only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import Story, load_stories
from emolens.extract import Reducer
from emolens.readout import window_readings
from emolens.stats import Estimate, bootstrap
from emolens.vectors import EmotionVectors

N_CLUSTERS = 10


@dataclass
class LayerAccuracy:
    layer: int
    top1: float
    top1_ci: tuple[float, float]
    top5: float
    top5_ci: tuple[float, float]
    cluster: float
    cluster_chance: float


@dataclass
class Validation:
    n_stories: int
    readout: str  # "raw" or "calibrated (<method>)"
    chance_top1: float
    chance_top5: float
    per_layer: list[LayerAccuracy]
    best_layer: int
    best_layer_chosen_on: str
    best_layer_top1: dict[str, float | int]  # Estimate on stories not used to choose the layer
    default_layer: int
    layer_cosine: list[list[float]]  # mean over emotions of cos(v_l, v_l')
    clusters: dict[str, list[str]]  # k-means at the default layer, keyed by a member-derived label
    logit_lens: dict[str, list[str]]  # top tokens of each vector at the default layer

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def ranks_of_truth(scores: Float[Tensor, "text emotion"], truth: Int[Tensor, " text"]) -> Int[Tensor, " text"]:
    """0-based rank of the true emotion among each text's scores (0 = top-1)."""
    true_scores = scores.gather(1, einops.rearrange(truth, "text -> text 1"))
    return (scores > true_scores).sum(dim=1)


def per_emotion_mean(hits: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean of ``hits`` over each emotion's stories (one value per emotion that has stories)."""
    return np.array([hits[truth == e].mean() for e in np.unique(truth)])


def emotion_bootstrap(hits: np.ndarray, truth: np.ndarray, seed: int = 0) -> Estimate:
    """Accuracy with a 95% interval from resampling emotions (the independent unit), not stories."""
    per_emotion = per_emotion_mean(hits, truth)
    return bootstrap(lambda idx: float(per_emotion[idx].mean()), per_emotion.size, seed=seed)


def kmeans_labels(vectors: Float[Tensor, "emotion d_model"], k: int = N_CLUSTERS, seed: int = 0) -> np.ndarray:
    """k-means cluster of each emotion vector (cosine geometry: vectors are unit norm)."""
    from sklearn.cluster import KMeans

    k = min(k, vectors.shape[0])
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors.double().numpy())


def validate(
    vectors: EmotionVectors,
    model: HookedTransformer,
    stories: Sequence[Story] | None = None,
    calibrated: bool = False,
    also: Sequence[Reducer] = (),
) -> Validation:
    """Held-out accuracy of ``vectors`` per layer on ``stories`` (default: the packaged validation split).

    ``also``: more reducers fed by the same pass over the held-out stories (those of the
    fitted emotions, in order), which reads every fitted layer.
    """
    vectors.check_model(model)
    held_out = [s for s in (stories or load_stories(split="validation")) if s.emotion in vectors.emotions]
    if not held_out:
        raise ValueError("no validation stories for the fitted emotions")
    use_calibration = calibrated
    truth = torch.tensor([vectors.emotions.index(s.emotion) for s in held_out])
    readings = window_readings(
        vectors, model, [s.text for s in held_out], calibrated=use_calibration, progress="validation", also=also
    )
    truth_np = truth.numpy()
    n_emotions = len(vectors.emotions)
    per_layer, all_ranks = [], []
    for row, layer in enumerate(vectors.layers):
        scores = readings[:, row]
        ranks = ranks_of_truth(scores, truth).numpy()
        all_ranks.append(ranks)
        clusters = kmeans_labels(vectors.vectors[row])
        predicted = scores.argmax(dim=1).numpy()
        cluster_hits = clusters[predicted] == clusters[truth_np]
        sizes = np.bincount(clusters) / n_emotions
        top1 = emotion_bootstrap((ranks == 0).astype(float), truth_np)
        top5 = emotion_bootstrap((ranks < 5).astype(float), truth_np)
        per_layer.append(
            LayerAccuracy(
                layer=layer,
                top1=round(top1.value, 4),
                top1_ci=(round(top1.low, 4), round(top1.high, 4)),
                top5=round(top5.value, 4),
                top5_ci=(round(top5.low, 4), round(top5.high, 4)),
                cluster=round(float(per_emotion_mean(cluster_hits.astype(float), truth_np).mean()), 4),
                cluster_chance=round(float((sizes**2).sum()), 4),
            )
        )
    best, chosen_on, reported = best_layer(vectors, truth_np, all_ranks)
    return Validation(
        n_stories=len(held_out),
        readout=f"calibrated ({vectors.calibration.method})" if use_calibration and vectors.calibration else "raw",
        chance_top1=round(1 / n_emotions, 4),
        chance_top5=round(min(5, n_emotions) / n_emotions, 4),
        per_layer=per_layer,
        best_layer=best,
        best_layer_chosen_on=chosen_on,
        best_layer_top1=reported.to_dict(),
        default_layer=vectors.default_layer,
        layer_cosine=layer_cosine(vectors).tolist(),
        clusters=named_clusters(vectors),
        logit_lens=logit_lens(vectors, model),
    )


def best_layer(vectors: EmotionVectors, truth: np.ndarray, ranks: list[np.ndarray]) -> tuple[int, str, Estimate]:
    """The best layer, what it was chosen on, and its top-1 on held-out stories not used to choose it."""
    selection = vectors.metadata.get("layer_selection")
    if selection and selection.get("best_layer") in vectors.layers:
        layer = int(selection["best_layer"])
        row = vectors.layers.index(layer)
        how = f"cross-validation on the training stories ({selection['folds']} folds)"
        return layer, how, emotion_bootstrap((ranks[row] == 0).astype(float), truth)
    first = np.zeros(truth.size, dtype=bool)
    for emotion in np.unique(truth):
        first[np.flatnonzero(truth == emotion)[0]] = True
    if first.all():
        raise ValueError("choosing the best layer on held-out stories needs two stories per emotion")
    row = int(np.argmax([float((r[first] == 0).mean()) for r in ranks]))
    reported = emotion_bootstrap((ranks[row][~first] == 0).astype(float), truth[~first])
    return vectors.layers[row], "the first held-out story of each emotion (reported on the others)", reported


def layer_cosine(vectors: EmotionVectors) -> Float[Tensor, "layer layer"]:
    """Mean over emotions of the cosine between an emotion's vectors at two layers."""
    unit = vectors.vectors / vectors.vectors.norm(dim=-1, keepdim=True)
    return einops.einsum(unit, unit, "l1 emotion d, l2 emotion d -> l1 l2") / unit.shape[1]


def named_clusters(vectors: EmotionVectors, layer: int | None = None) -> dict[str, list[str]]:
    """k-means clusters of the vectors at ``layer``, each named after its member closest to the centroid."""
    row = vectors.layer_index(layer)
    layer_vectors = vectors.vectors[row]
    labels = kmeans_labels(layer_vectors)
    out: dict[str, list[str]] = {}
    for cluster in sorted(set(labels.tolist())):
        members = [i for i, label in enumerate(labels) if label == cluster]
        centroid = layer_vectors[members].mean(dim=0)
        anchor = members[int((layer_vectors[members] @ centroid).argmax())]
        out[f"{vectors.emotions[anchor]} (+{len(members) - 1})"] = [vectors.emotions[i] for i in members]
    return out


def logit_lens(
    vectors: EmotionVectors, model: HookedTransformer, layer: int | None = None, k: int = 8
) -> dict[str, list[str]]:
    """Top-k output tokens of each emotion vector at ``layer`` read through the unembedding."""
    row = vectors.layer_index(layer)
    unembed = model.W_U.detach().float().cpu()
    logits = einops.einsum(vectors.vectors[row], unembed, "emotion d, d vocab -> emotion vocab")
    top = logits.topk(k, dim=-1).indices
    assert model.tokenizer is not None
    return {
        emotion: [str(model.tokenizer.decode([int(t)])).strip() for t in top[i]]
        for i, emotion in enumerate(vectors.emotions)
    }
