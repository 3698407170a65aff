"""Fitting emotion vectors at every layer.

The study's recipe (``mean_diff``): the mean over an emotion's stories of each story's
window-mean residual stream, minus the mean over emotions; then project out the top
principal components of neutral-text activations that explain ``denoise_variance`` of
their variance (0 turns denoising off); then unit-normalise. Alternatives share one
signature, ``method(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]``, so
they can be compared on the same validation split: ``mean_diff_raw`` (no denoising) and
``probe`` (multinomial logistic regression on story means).

Story means are kept (stories x layers x d_model), so the best layer is chosen by
cross-validation *within the training stories* at no extra model cost (folds of each
emotion's stories; the held-out validation split is never used to choose it).
The fit ends by measuring the readout calibration on the neutral texts
(:mod:`emolens.readout`): a means-only calibration (the default ``"position"``) from
residual sums gathered in the same pass that measures the neutral moments, any other
with a pass of its own (:func:`emolens.readout.calibrate`).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import check_emotion
from emolens.concepts import emotions as all_emotions
from emolens.corpus import Story, load_neutral, load_stories
from emolens.extract import (
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_WINDOW_START,
    ReadOptions,
    Reducer,
    TokenMoments,
    TokenMomentsReducer,
    check_layers,
    count_short,
    reduce,
    resid_hook,
    text_means,
)
from emolens.models import model_identity
from emolens.readout import DEFAULT_CALIBRATION, MEANS_ONLY_CALIBRATIONS, ResidBinSums, calibrate, calibrate_from_sums
from emolens.vectors import EmotionVectors, default_layer_for, weight_fingerprint

MIN_STORIES_PER_EMOTION = 2
CV_FOLDS = 5


@dataclass
class FitInputs:
    """Everything a fitting method may use (story means are computed once, before any method runs)."""

    story_means: Float[Tensor, "text layer d_model"]  # window mean of each training story
    labels: list[int]  # index into ``emotions`` for each story
    emotions: list[str]
    layers: list[int]
    neutral: TokenMoments  # token moments of neutral text at ``layers``
    denoise_variance: float


def emotion_means(inputs: FitInputs) -> Float[Tensor, "layer emotion d_model"]:
    """Per emotion, the mean of its stories' window means."""
    one_hot = torch.nn.functional.one_hot(torch.tensor(inputs.labels), len(inputs.emotions)).double()
    sums = einops.einsum(one_hot, inputs.story_means.double(), "text emotion, text layer d -> layer emotion d")
    counts = einops.rearrange(one_hot.sum(0).clamp(min=1), "emotion -> 1 emotion 1")
    return (sums / counts).float()


def neutral_subspace(
    covariance: Float[Tensor, "layer d_model d_model"], variance_fraction: float
) -> list[Float[Tensor, "d_model _k"]]:
    """Per layer, the top principal axes explaining ``variance_fraction`` of the variance (none for 0)."""
    bases = []
    for layer_cov in covariance.double():
        eigenvalues, eigenvectors = torch.linalg.eigh(layer_cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
        explained = eigenvalues.cumsum(0) / eigenvalues.sum()
        k = 0
        if variance_fraction > 0:
            target = torch.tensor(variance_fraction, dtype=explained.dtype)
            k = int(torch.searchsorted(explained, target).item()) + 1
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
    """Rows of a multinomial logistic regression on story means (centred), one per layer.

    With two emotions the regression has one weight vector w (emotion 1 vs 0): the rows
    are -w and +w, the same directions a two-class softmax would give.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(inputs.labels)
    weights = []
    for row in range(inputs.story_means.shape[1]):
        x = inputs.story_means[:, row].double().numpy()
        classifier = LogisticRegression(C=1.0, max_iter=300).fit(x - x.mean(axis=0), labels)
        coef = torch.from_numpy(classifier.coef_).float()
        weights.append(torch.cat([-coef, coef]) if coef.shape[0] == 1 else coef)
    return torch.stack(weights)


METHODS: dict[str, Callable[[FitInputs], Tensor]] = {
    "mean_diff": mean_diff,
    "mean_diff_raw": mean_diff_raw,
    "probe": probe,
}


def unit_vectors(raw: Float[Tensor, "layer emotion d_model"]) -> Float[Tensor, "layer emotion d_model"]:
    norms = raw.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a fitted direction is zero: the corpus does not separate these emotions")
    return raw / norms


def fold_of(labels: Sequence[int], folds: int) -> Int[Tensor, " text"]:
    """Stratified folds: the k-th story of each emotion goes to fold ``k % folds``."""
    seen: dict[int, int] = {}
    out = []
    for label in labels:
        out.append(seen.get(label, 0) % folds)
        seen[label] = seen.get(label, 0) + 1
    return torch.tensor(out)


def cross_validated_top1(inputs: FitInputs, method: str, folds: int = CV_FOLDS) -> list[float]:
    """Per layer, top-1 accuracy of ``method`` on training stories held out fold by fold."""
    fold = fold_of(inputs.labels, folds)
    labels = torch.tensor(inputs.labels)
    hits = torch.zeros(len(inputs.layers))
    for k in range(folds):
        train, test = fold != k, fold == k
        sub = replace(inputs, story_means=inputs.story_means[train], labels=labels[train].tolist())
        vectors = unit_vectors(METHODS[method](sub))
        center = einops.reduce(emotion_means(sub), "layer emotion d -> layer 1 d", "mean")
        held = einops.rearrange(inputs.story_means[test], "text layer d -> layer text d") - center
        scores = einops.einsum(held, vectors, "layer text d, layer emotion d -> layer text emotion")
        hits += (scores.argmax(dim=-1) == labels[test]).float().sum(dim=1)
    return (hits / len(labels)).tolist()


def layer_selection(inputs: FitInputs, method: str) -> dict[str, Any] | None:
    """Cross-validated top-1 per layer on the training stories and the best layer (None for ``probe``: too slow)."""
    if method == "probe":
        return None
    folds = int(min(CV_FOLDS, min(np.bincount(inputs.labels))))
    top1 = cross_validated_top1(inputs, method, folds)
    best = inputs.layers[int(np.argmax(top1))]
    return {"folds": folds, "cv_top1": [round(v, 4) for v in top1], "best_layer": best}


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()


def choose_default_layer(n_layers: int, fitted: Sequence[int]) -> tuple[int, str]:
    """The study's two-thirds layer when fitted, else the fitted layer nearest to it; and the rule used."""
    study = default_layer_for(n_layers)
    if study in fitted:
        return study, "round(2 * n_layers / 3) - 1 (the study's two-thirds depth)"
    nearest = min(fitted, key=lambda layer: (abs(layer - study), layer))
    return nearest, f"the fitted layer nearest to the study's two-thirds depth {study} (which was not fitted)"


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
    calibration: str | None = DEFAULT_CALIBRATION,
) -> EmotionVectors:
    """Fit one unit vector per emotion per layer (defaults: packaged corpus, all layers, the study's recipe).

    ``stories`` default to the packaged training split, ``neutral`` to the packaged neutral
    corpus; ``emotions`` restricts the fit to a subset of concepts; ``calibration`` is the
    readout calibration measured on ``neutral`` afterwards (``None`` skips it).
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
    options = ReadOptions(layers=chosen_layers, window_start=window_start, token_budget=token_budget)
    moments_reducer = TokenMomentsReducer(len(chosen_layers), model.cfg.d_model)
    # a means-only calibration is read off the same pass over neutral text (readings are linear)
    bin_sums = ResidBinSums(chosen_layers, model.cfg.d_model) if calibration in MEANS_ONLY_CALIBRATIONS else None
    reducers: list[Reducer] = [moments_reducer] if bin_sums is None else [moments_reducer, bin_sums]
    reduce(model, neutral_texts, replace(options, progress="neutral"), reducers)
    moments = moments_reducer.result()
    story_texts = [s.text for s in stories]
    inputs = FitInputs(
        story_means=text_means(model, story_texts, replace(options, progress="stories")),
        labels=[wanted.index(s.emotion) for s in stories],
        emotions=wanted,
        layers=chosen_layers,
        neutral=moments,
        denoise_variance=denoise_variance,
    )
    vectors = unit_vectors(METHODS[method](inputs))
    center = einops.reduce(emotion_means(inputs), "layer emotion d -> layer d", "mean")
    default, default_rule = choose_default_layer(model.cfg.n_layers, chosen_layers)
    settings = {
        "method": method,
        "denoise_variance": denoise_variance if method == "mean_diff" else None,
        "window_start": window_start,
        "token_budget": token_budget,
        "layers": chosen_layers,
        "emotions": len(wanted),
        "calibration": calibration,
    }
    result = EmotionVectors(
        emotions=wanted,
        layers=chosen_layers,
        vectors=vectors,
        center=center,
        resid_norms=moments.mean_norm,
        default_layer=default,
        metadata={
            "model": model_identity(model),
            "weight_fingerprint": weight_fingerprint(model),
            "hook": resid_hook(0).replace(".0.", ".{L}."),
            "method": method,
            "window_start": window_start,
            "denoise_variance": settings["denoise_variance"],
            "settings": settings,
            "corpus": {
                "stories_sha256": texts_digest(story_texts),
                "neutral_sha256": texts_digest(neutral_texts),
                "stories": len(story_texts),
                "neutral_texts": len(neutral_texts),
            },
            "stories_per_emotion": counts,
            "neutral_tokens": moments.count,
            "short_text_fallbacks": {
                "stories": count_short(model, story_texts, window_start),
                "neutral": count_short(model, neutral_texts, window_start),
            },
            "layer_selection": layer_selection(inputs, method),
            "default_layer_rule": default_rule,
            "fitted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "emolens": importlib.metadata.version("emolens"),
        },
    )
    if bin_sums is not None and calibration is not None:
        calibrate_from_sums(result, model, neutral_texts, bin_sums, calibration)
    elif calibration is not None:
        calibrate(result, model, neutral_texts, method=calibration)
    return result
