"""Fitting variants for the geometry study: the study's recipe with one choice changed at a time.

A :class:`Variant` names the choices (denoising set and variance, story form, topic
effects, person balance, form regressed out across emotions; see
:mod:`emolens.experiments.geometry_study` for what each does and how one is chosen).
:func:`fit_variant` fits unit vectors under a variant from cached story means
(:class:`StudyData`): linear algebra only, no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from emolens.concepts import emotions as all_emotions
from emolens.corpus import load_stories
from emolens.experiments.activation_cache import load_neutral_moments, load_story_means, pool_moments
from emolens.extract import TokenMoments
from emolens.fit import neutral_subspace, project_out
from emolens.style import form_matrix, group_means, standardise

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
