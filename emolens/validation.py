"""Where the emotion directions form: held-out accuracy per layer, clusters, layer similarity, logit lens.

A held-out story is classified by the emotion whose vector its centred window mean
projects onto most strongly. Per layer: top-1 and top-5 accuracy over all fitted
emotions and accuracy over k-means clusters of that layer's vectors, each beside its
chance level and a bootstrap 95% interval over stories.
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
from emolens.extract import text_means
from emolens.vectors import EmotionVectors

N_CLUSTERS = 10
BOOTSTRAP_SAMPLES = 1000


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
    chance_top1: float
    chance_top5: float
    per_layer: list[LayerAccuracy]
    best_layer: int
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


def bootstrap_ci(hits: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of 0/1 ``hits`` over resampled stories."""
    rng = np.random.default_rng(seed)
    means = rng.choice(hits, size=(BOOTSTRAP_SAMPLES, hits.size), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def kmeans_labels(vectors: Float[Tensor, "emotion d_model"], k: int = N_CLUSTERS, seed: int = 0) -> np.ndarray:
    """k-means cluster of each emotion vector (cosine geometry: vectors are unit norm)."""
    from sklearn.cluster import KMeans

    k = min(k, vectors.shape[0])
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors.double().numpy())


def validate(vectors: EmotionVectors, model: HookedTransformer, stories: Sequence[Story] | None = None) -> Validation:
    """Held-out accuracy of ``vectors`` per layer on ``stories`` (default: the packaged validation split)."""
    vectors.check_model(model)
    held_out = [s for s in (stories or load_stories(split="validation")) if s.emotion in vectors.emotions]
    if not held_out:
        raise ValueError("no validation stories for the fitted emotions")
    truth = torch.tensor([vectors.emotions.index(s.emotion) for s in held_out])
    window = int(vectors.metadata.get("window_start", 50))
    means = text_means(model, [s.text for s in held_out], vectors.layers, window, progress="validation")
    n_emotions = len(vectors.emotions)
    per_layer = []
    for row, layer in enumerate(vectors.layers):
        scores = vectors.project(means[:, row], layer)
        ranks = ranks_of_truth(scores, truth).numpy()
        clusters = kmeans_labels(vectors.vectors[row])
        predicted = scores.argmax(dim=1).numpy()
        cluster_hits = clusters[predicted] == clusters[truth.numpy()]
        sizes = np.bincount(clusters) / n_emotions
        per_layer.append(
            LayerAccuracy(
                layer=layer,
                top1=round(float((ranks == 0).mean()), 4),
                top1_ci=bootstrap_ci((ranks == 0).astype(float)),
                top5=round(float((ranks < 5).mean()), 4),
                top5_ci=bootstrap_ci((ranks < 5).astype(float)),
                cluster=round(float(cluster_hits.mean()), 4),
                cluster_chance=round(float((sizes**2).sum()), 4),
            )
        )
    best = max(per_layer, key=lambda acc: (acc.top1, acc.top5)).layer
    return Validation(
        n_stories=len(held_out),
        chance_top1=round(1 / n_emotions, 4),
        chance_top5=round(min(5, n_emotions) / n_emotions, 4),
        per_layer=per_layer,
        best_layer=best,
        default_layer=vectors.default_layer,
        layer_cosine=layer_cosine(vectors).tolist(),
        clusters=named_clusters(vectors),
        logit_lens=logit_lens(vectors, model),
    )


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
