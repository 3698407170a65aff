"""Fitting emotion vectors at every layer.

The study's recipe (``mean_diff``): the mean over an emotion's stories of each story's
window-mean residual stream, minus the mean over emotions; then project out the top
principal components of neutral-text activations that explain ``denoise_variance`` of
their variance; then unit-normalise. Alternatives share one signature,
``method(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]``, so they can be
compared on the same validation split: ``mean_diff_raw`` (no denoising) and ``probe``
(multinomial logistic regression on story means).
"""

from __future__ import annotations

import datetime
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import check_emotion
from emolens.concepts import emotions as all_emotions
from emolens.corpus import Story, load_neutral, load_stories
from emolens.extract import (
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_WINDOW_START,
    TokenMoments,
    check_layers,
    count_short,
    group_sums,
    resid_hook,
    text_means,
    token_moments,
)
from emolens.models import model_identity
from emolens.vectors import EmotionVectors, default_layer_for

MIN_STORIES_PER_EMOTION = 2


@dataclass
class FitInputs:
    """Everything a fitting method may use."""

    model: HookedTransformer
    texts: list[str]  # training stories
    labels: list[int]  # index into ``emotions`` for each text
    emotions: list[str]
    layers: list[int]
    neutral: TokenMoments  # token moments of neutral text at ``layers``
    denoise_variance: float
    window_start: int
    token_budget: int
    means: Tensor | None = None  # emotion means, once computed: Float[Tensor, "layer emotion d_model"]


def emotion_means(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]:
    """Per emotion, the mean of its stories' window means (streamed running sums; computed once)."""
    if inputs.means is not None:
        return inputs.means
    sums = group_sums(
        inputs.model,
        inputs.texts,
        inputs.labels,
        len(inputs.emotions),
        inputs.layers,
        inputs.window_start,
        inputs.token_budget,
        progress="stories",
    )
    inputs.means = einops.rearrange(sums.means(), "emotion layer d -> layer emotion d")
    return inputs.means


def neutral_subspace(
    covariance: Float[Tensor, "layer d_model d_model"], variance_fraction: float
) -> list[Float[Tensor, "d_model _k"]]:
    """Per layer, the top principal axes explaining ``variance_fraction`` of the variance."""
    bases = []
    for layer_cov in covariance.double():
        eigenvalues, eigenvectors = torch.linalg.eigh(layer_cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
        explained = eigenvalues.cumsum(0) / eigenvalues.sum()
        k = int(torch.searchsorted(explained, torch.tensor(variance_fraction, dtype=explained.dtype)).item()) + 1
        bases.append(eigenvectors[:, : min(k, eigenvectors.shape[1])].float())
    return bases


def project_out(
    vectors: Float[Tensor, "layer emotion d_model"], bases: Sequence[Float[Tensor, "d_model _k"]]
) -> Float[Tensor, "layer emotion d_model"]:
    """Remove each layer's subspace (orthonormal columns of ``bases[layer]``) from its vectors."""
    out = []
    for layer_vectors, basis in zip(vectors, bases, strict=True):
        coefficients = einops.einsum(layer_vectors, basis, "emotion d, d k -> emotion k")
        out.append(layer_vectors - einops.einsum(coefficients, basis, "emotion k, d k -> emotion d"))
    return torch.stack(out)


def mean_diff_raw(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]:
    """Emotion means minus their mean over emotions; no denoising."""
    means = emotion_means(inputs)
    return means - einops.reduce(means, "layer emotion d -> layer 1 d", "mean")


def mean_diff(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]:
    """The study's recipe: ``mean_diff_raw`` with the neutral top-PC subspace projected out."""
    return project_out(mean_diff_raw(inputs), neutral_subspace(inputs.neutral.covariance, inputs.denoise_variance))


def probe(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]:
    """Rows of a multinomial logistic regression on story means (centred), one per layer."""
    from sklearn.linear_model import LogisticRegression

    features = text_means(
        inputs.model, inputs.texts, inputs.layers, inputs.window_start, inputs.token_budget, progress="stories"
    )
    labels = np.asarray(inputs.labels)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), len(inputs.emotions)).float()
    sums = einops.einsum(one_hot, features, "text emotion, text layer d -> layer emotion d")
    inputs.means = sums / einops.rearrange(one_hot.sum(0).clamp(min=1), "emotion -> 1 emotion 1")
    weights = []
    for row in range(features.shape[1]):
        x = features[:, row].numpy()
        classifier = LogisticRegression(C=1.0, max_iter=300).fit(x - x.mean(axis=0), labels)
        weights.append(torch.from_numpy(classifier.coef_).float())
    return torch.stack(weights)


METHODS: dict[str, Callable[[FitInputs], Tensor]] = {
    "mean_diff": mean_diff,
    "mean_diff_raw": mean_diff_raw,
    "probe": probe,
}


def fit_emotion_vectors(
    model: HookedTransformer,
    stories: Sequence[Story] | None = None,
    neutral: Sequence[str] | None = None,
    layers: Sequence[int] | str = "all",
    method: str = "mean_diff",
    denoise_variance: float = 0.5,
    emotions: Sequence[str] | None = None,
    window_start: int = DEFAULT_WINDOW_START,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> EmotionVectors:
    """Fit one unit vector per emotion per layer (defaults: packaged corpus, all layers, the study's recipe).

    ``stories`` default to the packaged training split, ``neutral`` to the packaged neutral
    corpus; ``emotions`` restricts the fit to a subset of concepts.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= denoise_variance < 1.0:
        raise ValueError(f"denoise_variance must be in [0, 1), got {denoise_variance}")
    chosen_layers = check_layers(model, layers)
    stories = list(stories) if stories is not None else load_stories(split="train")
    wanted = [check_emotion(e) for e in emotions] if emotions is not None else list(all_emotions())
    stories = [s for s in stories if s.emotion in wanted]
    counts = {e: sum(s.emotion == e for s in stories) for e in wanted}
    thin = [e for e, c in counts.items() if c < MIN_STORIES_PER_EMOTION]
    if thin:
        raise ValueError(
            f"corpus too small: {len(thin)} emotion(s) have fewer than {MIN_STORIES_PER_EMOTION} stories "
            f"({', '.join(thin[:5])}); add stories or pass emotions=[...]"
        )
    neutral_texts = list(neutral) if neutral is not None else load_neutral()
    if not neutral_texts:
        raise ValueError("empty neutral corpus: denoising and steering units need neutral texts")
    moments = token_moments(model, neutral_texts, chosen_layers, window_start, token_budget, progress="neutral")
    inputs = FitInputs(
        model=model,
        texts=[s.text for s in stories],
        labels=[wanted.index(s.emotion) for s in stories],
        emotions=wanted,
        layers=chosen_layers,
        neutral=moments,
        denoise_variance=denoise_variance,
        window_start=window_start,
        token_budget=token_budget,
    )
    raw = METHODS[method](inputs)
    center = einops.reduce(emotion_means(inputs), "layer emotion d -> layer d", "mean")
    norms = raw.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a fitted direction is zero: the corpus does not separate these emotions")
    vectors = raw / norms
    default = default_layer_for(model.cfg.n_layers)
    if default not in chosen_layers:
        default = chosen_layers[len(chosen_layers) * 2 // 3]
    return EmotionVectors(
        emotions=wanted,
        layers=chosen_layers,
        vectors=vectors,
        center=center,
        resid_norms=moments.mean_norm,
        default_layer=default,
        metadata={
            "model": model_identity(model),
            "hook": resid_hook(0).replace(".0.", ".{L}."),
            "method": method,
            "window_start": window_start,
            "denoise_variance": denoise_variance if method == "mean_diff" else None,
            "stories_per_emotion": counts,
            "neutral_tokens": moments.count,
            "short_text_fallbacks": {
                "stories": count_short(model, inputs.texts, window_start),
                "neutral": count_short(model, neutral_texts, window_start),
            },
            "default_layer_rule": "round(2 * n_layers / 3) - 1 (the study's two-thirds depth)",
            "fitted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "emolens": importlib.metadata.version("emolens"),
        },
    )
