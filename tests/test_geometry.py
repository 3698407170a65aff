"""Geometry experiment and story-form measurements on the tiny model and on synthetic data."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from emolens.corpus import load_neutral, load_stories
from emolens.experiments import geometry
from emolens.fit import fit_emotion_vectors
from emolens.style import FORM_FEATURES, explained_by_form, form_matrix, group_means, story_form
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "joyful", "angry", "sad", "bored", "excited", "proud", "ashamed", "nervous"]


@pytest.fixture(scope="module")
def geometry_vectors(tiny_model) -> EmotionVectors:
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    first_two = [s for e in EMOTIONS for s in [s for s in stories if s.emotion == e][:2]]
    chosen = [replace(s, text=" ".join(s.text.split()[:25])) for s in first_two]  # short: fast on byte tokens
    return fit_emotion_vectors(
        tiny_model, stories=chosen, neutral=load_neutral()[:4], emotions=EMOTIONS, window_start=20
    )


def check_estimate(estimate: dict) -> None:
    assert set(estimate) == {"value", "low", "high", "n"}
    assert all(math.isfinite(estimate[k]) for k in ("value", "low", "high"))
    assert estimate["low"] <= estimate["value"] <= estimate["high"]


def test_run_quick_structure_and_finite(tiny_model, geometry_vectors) -> None:
    data = geometry.run(tiny_model, geometry_vectors, profile="quick").to_dict()
    json.dumps(data, allow_nan=False)
    assert data["emotions"] == EMOTIONS and data["n_rated"] == len(EMOTIONS)
    assert [g["layer"] for g in data["per_layer"]] == sorted(set(geometry_vectors.layers))
    for entry in data["per_layer"]:
        assert abs(sum(entry["explained"]) - 1) < 1e-6  # 10 emotions: at most 9 components carry all the variance
        for pc in ("PC1", "PC2", "PC3"):
            for target in ("valence", "arousal"):
                for method in ("pearson", "spearman"):
                    check_estimate(entry["correlations"][pc][target][method])
        for target in ("valence", "arousal"):
            check_estimate(entry["cv_axes"][target])
    assert sorted(data["cluster_order"]) == sorted(EMOTIONS)
    cosine = np.array(data["cosine"])
    assert cosine.shape == (10, 10) and np.allclose(np.diag(cosine), 1, atol=1e-3)
    assert sorted(m for members in data["clusters"].values() for m in members) == sorted(EMOTIONS)


def test_render_draws_without_recomputing(tiny_model, geometry_vectors) -> None:
    from emolens.report.page import Page

    page = Page("geometry")
    geometry.render(page, geometry.run(tiny_model, geometry_vectors, profile="quick").to_dict())
    html = page.render()
    assert html.count("<img") == 2 and "PC1 val" in html


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_vectorised_correlation_matches_stats_module(method: str) -> None:
    from emolens.stats import correlation_ci

    rng = np.random.default_rng(3)
    x = rng.normal(size=60)
    y = 0.5 * x + rng.normal(size=60)
    y[:5] = y[5]  # ties
    ours, reference = geometry.correlation(x, y, method), correlation_ci(x, y, method)
    assert ours.value == pytest.approx(reference.value, abs=1e-6)
    assert ours.low == pytest.approx(reference.low, abs=0.05) and ours.high == pytest.approx(reference.high, abs=0.05)
    with pytest.raises(ValueError, match="constant"):
        geometry.correlation(x, np.ones(60), method)


def test_principal_components_recover_a_planted_axis() -> None:
    rng = np.random.default_rng(0)
    axis = rng.normal(size=64)
    latent = rng.normal(size=40)
    vectors = torch.from_numpy(np.outer(latent, axis) * 3 + rng.normal(size=(40, 64)) * 0.1)
    scores, ratios = geometry.principal_components(vectors)
    assert abs(np.corrcoef(scores[:, 0], latent)[0, 1]) > 0.99 and ratios[0] > 0.9
    assert np.all(np.diff(ratios) <= 1e-12)


def test_cross_validated_axis_finds_signal_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(120, 50))
    target = features[:, 0] * 2 + rng.normal(size=120) * 0.5
    signal, predicted = geometry.cross_validated_axis(features, target)
    assert signal.value > 0.8 and predicted.shape == (120,)
    noise, _ = geometry.cross_validated_axis(features, rng.normal(size=120))
    assert noise.value < 0.4


def test_too_few_rated_emotions_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="human ratings"):
        geometry.layer_geometry(torch.randn(3, 8), ["afraid", "calm", "joyful"], layer=0)


def test_story_form_features() -> None:
    form = story_form('I opened the door. "Who is it?" she asked. My hands shook and I thought of you!')
    assert form.dialogue_share == pytest.approx(3 / 17)
    assert form.first_person == pytest.approx(3 / 4)  # I, My, I vs she
    assert form.words == 17 and form.body_rate == pytest.approx(100 / 17)
    assert form.thought_rate == pytest.approx(100 / 17) and form.question_rate == pytest.approx(100 / 17)
    with pytest.raises(ValueError, match="empty text"):
        story_form("  ...  ")


def test_form_explains_a_planted_style_score_and_not_a_random_one() -> None:
    stories = load_stories(split="train")[:300]
    features = form_matrix([s.text for s in stories])
    assert features.shape == (300, len(FORM_FEATURES))
    rng = np.random.default_rng(0)
    planted = features[:, 0] / features[:, 0].std() + 0.3 * rng.normal(size=300)
    fits = explained_by_form(features, np.column_stack([planted, rng.normal(size=300)]))
    assert fits[0].r2_cv > 0.8 and fits[0].correlations["dialogue_share"] > 0.9
    assert fits[1].r2_cv < 0.05
    means = group_means(features, [i % 3 for i in range(300)], 3)
    assert means.shape == (3, len(FORM_FEATURES))
