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


@pytest.fixture(scope="module")
def geometry_data(tiny_model, geometry_vectors) -> dict:
    return geometry.run(tiny_model, geometry_vectors, profile="quick").to_dict()


def test_run_quick_structure_and_finite(geometry_data, geometry_vectors) -> None:
    data = geometry_data
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


def test_headlines(geometry_data) -> None:
    rows = geometry.headlines(geometry_data)
    assert [r[2] for r in rows] == ["0.81", "0.66", ""] and all("[" in r[1] for r in rows)


def test_render_draws_without_recomputing(geometry_data) -> None:
    from emolens.report.page import Page

    page = Page("geometry")
    geometry.render(page, geometry_data)
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


def synthetic_study_data(seed: int = 0, form_strength: float = 4.0):
    """Story means = emotion + topic + form-driven direction + noise, for the study's linear algebra."""
    from emolens.experiments.geometry_variants import TRAIN_FOLDS, StudyData
    from emolens.extract import TokenMoments

    rng = np.random.default_rng(seed)
    n_emotions, per_emotion, n_topics, d = 12, 10, 15, 32
    labels = np.repeat(np.arange(n_emotions), per_emotion)
    topics = rng.integers(0, n_topics, labels.size)
    forms = rng.normal(size=(labels.size, 8))
    emotion_dirs, topic_dirs = rng.normal(size=(n_emotions, d)), 3 * rng.normal(size=(n_topics, d))
    form_dir = rng.normal(size=d)
    x = (
        emotion_dirs[labels]
        + topic_dirs[topics]
        + form_strength * np.outer(forms[:, 0], form_dir)
        + 0.1 * rng.normal(size=(labels.size, d))
    )
    means = torch.from_numpy(np.stack([x, x], axis=1)).float()  # two identical layers
    moments = TokenMoments(100, torch.zeros(2, d), torch.eye(d).repeat(2, 1, 1), torch.ones(2))
    data = StudyData(
        means=means,
        labels=labels,
        train=np.ones(labels.size, dtype=bool),
        first_person=np.arange(labels.size) % 2 == 0,
        topics=topics,
        forms=forms,
        fold=np.tile(np.arange(per_emotion) % TRAIN_FOLDS, n_emotions),
        half=np.tile(np.arange(per_emotion) % 2, n_emotions),
        neutral={"neutral": moments},
        emotions=[f"e{i}" for i in range(n_emotions)],
        n_layers=2,
    )
    return data, emotion_dirs, topic_dirs, form_dir


def test_topic_adjustment_and_form_projection_remove_planted_confounds() -> None:
    from emolens.experiments.geometry_variants import Variant, fit_variant, form_basis, topic_adjusted

    plain, emotion_dirs, _, _ = synthetic_study_data(form_strength=0.0)
    adjusted = topic_adjusted(plain.means, plain.labels, plain.topics, len(plain.emotions))[:, 0].numpy()
    residual = adjusted - emotion_dirs[plain.labels]
    residual -= residual.mean(axis=0)
    assert np.abs(residual).max() < 0.6  # topic effects gone up to noise; raw topic effects reach ~10
    data, _, _, form_dir = synthetic_study_data()
    basis = form_basis(data.means, data.forms, data.labels, len(data.emotions))[0].numpy()  # d x feature
    unit = form_dir / np.linalg.norm(form_dir)
    assert np.linalg.norm(basis.T @ unit) > 0.95  # the planted form direction lies in the removed span
    vectors, center = fit_variant(data, Variant("none", 0.0, form=True, topic=True), data.train)
    assert vectors.shape == (2, 12, 32) and center.shape == (2, 32)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2, 12), atol=1e-5)
    assert np.abs(vectors[0].numpy() @ unit).max() < 0.01
    unprojected, _ = fit_variant(data, Variant("none", 0.0, topic=True), data.train)
    assert np.abs(unprojected[0].numpy() @ unit).max() > 0.1  # the confound was there before


def test_within_emotion_denoising_removes_the_topic_spread() -> None:
    from emolens.experiments.geometry_variants import Variant, fit_variant, within_covariance

    data, _, topic_dirs, _ = synthetic_study_data(form_strength=0.0)
    covariance = within_covariance(data.means, data.labels, len(data.emotions))
    assert covariance.shape == (2, 32, 32) and torch.allclose(covariance, covariance.transpose(1, 2), atol=1e-4)
    vectors, _ = fit_variant(data, Variant("within", 0.9), data.train)
    top_topic = np.linalg.svd(topic_dirs - topic_dirs.mean(0), full_matrices=False)[2][0]
    assert np.abs(vectors[0].numpy() @ top_topic).max() < 0.05  # the largest topic direction is projected out


def test_train_cv_accuracy_and_choice_rule() -> None:
    from emolens.experiments.geometry_study import choose, train_cv_accuracy
    from emolens.experiments.geometry_variants import RECIPE, Variant

    data, *_ = synthetic_study_data(form_strength=0.0)
    clean = train_cv_accuracy(data, Variant("none", 0.0, topic=True))
    confounded = train_cv_accuracy(data, Variant("none", 0.0))
    assert clean.shape == (2,) and clean[0] > confounded[0] + 0.3  # topic effects hide the emotions
    summaries = [
        {"variant": RECIPE.name, "settings": {}, "per_layer": [{"layer": 1, "train_cv_top1": 0.5, "form_share": 0.4}]},
        {"variant": "a", "settings": {}, "per_layer": [{"layer": 1, "train_cv_top1": 0.3, "form_share": 0.0}]},
        {"variant": "b", "settings": {}, "per_layer": [{"layer": 1, "train_cv_top1": 0.495, "form_share": 0.1}]},
    ]
    assert choose(summaries, default_layer=1)["variant"] == "b"  # "a" is less form-driven but loses accuracy
    diagnostic = {"form_between": True}
    summaries.append(
        {"variant": "c", "settings": diagnostic, "per_layer": [{"layer": 1, "train_cv_top1": 0.6, "form_share": 0.0}]}
    )
    assert choose(summaries, default_layer=1)["variant"] == "b"  # never a variant that zeroes the criterion itself


def test_pooled_moments_equal_moments_of_the_union() -> None:
    from emolens.experiments.activation_cache import pool_moments
    from emolens.extract import TokenMoments

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 1, 4)) + 3, rng.normal(size=(80, 1, 4))

    def moments(x: np.ndarray) -> TokenMoments:
        cov = np.cov(x[:, 0].T)[None]
        norm = np.linalg.norm(x, axis=-1).mean(axis=0)
        return TokenMoments(
            len(x), torch.tensor(x.mean(0)).float(), torch.tensor(cov).float(), torch.tensor(norm).float()
        )

    pooled, union = pool_moments([moments(a), moments(b)]), moments(np.concatenate([a, b]))
    assert pooled.count == 130
    assert torch.allclose(pooled.covariance, union.covariance, atol=1e-4)
    assert torch.allclose(pooled.mean, union.mean, atol=1e-5) and torch.allclose(
        pooled.mean_norm, union.mean_norm, atol=1e-5
    )


def test_run_study_end_to_end_on_a_synthetic_cache(tmp_path) -> None:
    """The whole study on random activations of the packaged stories' shape: structure and the recipe baseline."""
    from safetensors.torch import save_file

    from emolens.corpus import data_path
    from emolens.experiments.activation_cache import file_digest, text_digests
    from emolens.experiments.geometry_study import run_study
    from emolens.experiments.geometry_variants import RECIPE, Variant

    generator = torch.Generator().manual_seed(0)
    n_stories, n_layers, d = len(load_stories()), 3, 16
    save_file(
        {"means": torch.randn(n_stories, n_layers, d, generator=generator)}, str(tmp_path / "story_means.safetensors")
    )
    (tmp_path / "story_means.json").write_text(json.dumps({"stories_sha256": file_digest(data_path("stories.jsonl"))}))
    tokens = torch.randn(500, d, generator=generator) * torch.linspace(3, 0.1, d)
    moments = {
        "mean": tokens.mean(0).repeat(n_layers, 1),
        "covariance": torch.cov(tokens.T).repeat(n_layers, 1, 1),
        "mean_norm": torch.ones(n_layers),
        "count": torch.tensor([500]),
    }
    save_file(moments, str(tmp_path / "neutral_neutral.safetensors"))
    digests = text_digests(load_neutral())
    (tmp_path / "neutral_neutral.json").write_text(json.dumps({"text_sha256s": digests}))
    variants = [RECIPE, Variant("narrative", 0.5), Variant("none", 0.0, form=True, topic=True, balance=True)]
    variants.append(Variant("within", 0.5))
    result = run_study(tmp_path, ["neutral"], variants=variants)
    json.dumps(result, allow_nan=False)
    names = [v["variant"] for v in result["variants"]]
    assert names == [RECIPE.name, "no-denoise+form+topic+balance", "within@0.5"]  # uncached narrative skipped
    assert result["chosen"] in names
    from emolens.experiments.geometry_study import markdown

    tables = markdown(result)
    assert tables.count("| 2 |") >= 2 and "no-denoise+form+topic+balance" in tables
    assert len(result["before"]["per_layer"]) == n_layers == len(result["form"]["per_layer"])
    for row in result["after"]["per_layer"]:
        check_estimate(row["validation_top1"])
        assert -1 <= row["split_half_cosine_r"] <= 1
        assert row["validation_top1"]["value"] < 0.1  # random activations: near chance (1/171)


def test_between_emotion_regression_leaves_vectors_uncorrelated_with_form() -> None:
    from emolens.experiments.geometry_variants import regress_out_between

    rng = np.random.default_rng(4)
    forms = rng.normal(size=(30, 8))
    raw = torch.from_numpy(rng.normal(size=(2, 30, 16)) + forms[None, :, :1] * 5).float()
    residual = regress_out_between(raw, forms).double().numpy()
    design = np.column_stack([np.ones(30), forms])
    assert np.abs(design.T @ residual[0]).max() < 1e-3  # orthogonal to every form column and the mean


def test_neutral_moments_cached_in_parts_pool_to_the_whole(tiny_model, tmp_path, monkeypatch) -> None:
    from emolens.experiments import activation_cache

    rows = [{"kind": "expository", "topic": "t", "text": " ".join(t.split()[:30])} for t in load_neutral()[:6]]
    for name, chosen in (("whole", rows), ("part_a", rows[:2]), ("part_b", rows[2:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    monkeypatch.setattr(activation_cache, "NEUTRAL_SETS", {"neutral": "whole.jsonl"})
    monkeypatch.setattr(activation_cache, "data_path", lambda name: tmp_path / name)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="no cached moments"):
        activation_cache.load_neutral_moments(cache, "neutral")
    for part in ("part_a", "part_b"):
        activation_cache.save_neutral_moments(tiny_model, "neutral", cache, tmp_path / f"{part}.jsonl", window_start=5)
    pooled = activation_cache.load_neutral_moments(cache, "neutral")
    activation_cache.save_neutral_moments(tiny_model, "neutral", cache, window_start=5)
    whole = activation_cache.load_neutral_moments(cache, "neutral")
    assert pooled.count == whole.count
    assert torch.allclose(pooled.covariance, whole.covariance, atol=1e-4, rtol=1e-3)
    assert torch.allclose(pooled.mean, whole.mean, atol=1e-5)


def test_estimate_text_formats_value_and_interval() -> None:
    from emolens.stats import Estimate, estimate_text

    estimate = Estimate(0.5, -0.25, 1.0, 12)
    assert str(estimate) == estimate_text(estimate.to_dict()) == "+0.500 [-0.250, +1.000]"
    assert estimate_text(estimate.to_dict(), 1, signed=False) == "0.5 [-0.2, 1.0]"
    assert estimate_text(None) == "-"
