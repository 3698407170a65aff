"""Reading experiments (scenarios, intensity, speakers, corpus scan) on the tiny model, profile quick."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer

from emolens.corpus import load_neutral, load_stories
from emolens.experiments import corpus_scan, intensity, scenarios, speakers
from emolens.experiments.scenarios import descending_ranks
from emolens.experiments.speakers import load_dialogues, ridge_map
from emolens.fit import fit_emotion_vectors
from emolens.readout import calibrate
from emolens.stages import SharedStoryPass
from emolens.vectors import EmotionVectors

# the emotions the quick profiles' scenarios, templates and dialogues name (and a few more)
READING_EMOTIONS = [
    "afraid", "alarmed", "calm", "worried", "relaxed", "grief-stricken", "sad", "shocked", "terrified",
    "furious", "joyful", "proud", "envious", "panicked", "grateful", "resentful", "lonely", "bored", "excited",
    "loving", "sympathetic", "compassionate",
]  # fmt: skip


@pytest.fixture(scope="module")
def reading_vectors(tiny_model: HookedTransformer) -> EmotionVectors:
    """Tiny-model vectors for the emotions above (two training stories each), calibrated on neutral text."""
    train = load_stories(split="train")
    picked = [s for e in READING_EMOTIONS for s in [x for x in train if x.emotion == e][:2]]
    vecs = fit_emotion_vectors(
        tiny_model, stories=picked, neutral=load_neutral()[:6], emotions=READING_EMOTIONS, window_start=20
    )
    if vecs.calibration is None:
        calibrate(vecs, tiny_model, neutral=load_neutral()[:6])
    return vecs


def walk_numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in walk_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in walk_numbers(v)]
    raise AssertionError(f"not JSON-serialisable: {type(value)}")


def estimates(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        own = [value] if {"value", "low", "high", "n"} <= set(value) else []
        return own + [e for v in value.values() for e in estimates(v)]
    if isinstance(value, list):
        return [e for v in value for e in estimates(v)]
    return []


def check_result(data: dict[str, Any], min_estimates: int) -> None:
    json.dumps(data, allow_nan=False)
    assert all(math.isfinite(n) for n in walk_numbers(data))
    found = estimates(data)
    assert len(found) >= min_estimates
    for e in found:
        assert e["low"] <= e["value"] <= e["high"], e
        assert e["n"] >= 2


def test_scenarios_quick(tiny_model: HookedTransformer, reading_vectors: EmotionVectors) -> None:
    data = scenarios.run(tiny_model, reading_vectors, profile="quick").to_dict()
    check_result(data, min_estimates=8)
    assert data["calibrated"] is True
    assert len(data["readings"]) == len(data["scenarios"]) == 12
    assert all(len(row) == len(READING_EMOTIONS) for row in data["readings"])
    summary = data["expected"]["raw"]
    assert 1 <= summary["mean_rank"]["value"] <= len(READING_EMOTIONS)
    assert 0 < summary["permutation_p"] <= 1
    assert data["loving"] is not None


def test_intensity_quick(tiny_model: HookedTransformer, reading_vectors: EmotionVectors) -> None:
    data = intensity.run(tiny_model, reading_vectors, profile="quick").to_dict()
    check_result(data, min_estimates=2)
    tylenol = data["templates"][0]
    assert tylenol["id"] == "tylenol"
    assert {p["emotion"] for p in tylenol["pairs"]} == {"afraid", "alarmed", "calm"}
    for pair in tylenol["pairs"]:
        assert len(pair["readings"]) == len(tylenol["values"])
        assert pair["expected_sign"] == ((pair["rho"] > 0) == (pair["expected"] == "up")) or pair["rho"] == 0
    assert 0 <= data["share_expected_sign"]["value"] <= 1


def test_speakers_quick(tiny_model: HookedTransformer, reading_vectors: EmotionVectors) -> None:
    data = speakers.run(tiny_model, reading_vectors, profile="quick").to_dict()
    check_result(data, min_estimates=6)
    assert data["n_dialogues"] >= 3
    assert data["probes"]["present"]["held_out_rank"]["value"] >= 1


def test_corpus_scan_quick(tiny_model: HookedTransformer, reading_vectors: EmotionVectors) -> None:
    data = corpus_scan.run(tiny_model, reading_vectors, profile="quick").to_dict()
    check_result(data, min_estimates=4)
    assert len(data["emotions"]) == 4
    for emotion in data["emotions"]:
        scores = [p["score"] for p in emotion["top"]]
        assert scores == sorted(scores, reverse=True)
        best = emotion["top"][0]
        assert len(best["tokens"]) == len(best["values"]) > 0
        assert "".join(best["tokens"]) == best["text"]


def test_corpus_scan_token_values_match_read(tiny_model: HookedTransformer, reading_vectors: EmotionVectors) -> None:
    """The stored per-token values are the public ``vecs.read`` of that passage (batching changes nothing)."""
    data = corpus_scan.run(tiny_model, reading_vectors, profile="quick").to_dict()
    emotion = data["emotions"][0]
    best = emotion["top"][0]
    read = reading_vectors.read(tiny_model, best["text"], data["layer"])
    column = read[-len(best["values"]) :, reading_vectors.emotions.index(emotion["emotion"])]
    np.testing.assert_allclose(best["values"], column.numpy(), atol=2e-2, rtol=2e-2)


def test_corpus_scan_on_stories_read_in_validations_pass_matches_the_scan_alone(
    tiny_model: HookedTransformer, reading_vectors: EmotionVectors
) -> None:
    """The run's shared pass (validation reads every layer, the scan's reducer rides along) changes no result."""
    alone = corpus_scan.run(tiny_model, reading_vectors, profile="cpu").to_dict()
    shared = SharedStoryPass(tiny_model, reading_vectors, "cpu", load_stories(split="validation"))
    shared.plan(["validation", "corpus_scan"])
    assert shared.scan_arguments() == {}  # nothing to hand over before validation has run
    validation = shared.validation()
    arguments = shared.scan_arguments()
    assert len(arguments["story_readings"].token_ids) == alone["n_stories"] == validation["n_stories"]
    with_shared = corpus_scan.run(tiny_model, reading_vectors, profile="cpu", **arguments).to_dict()
    assert [e["emotion"] for e in with_shared["emotions"]] == [e["emotion"] for e in alone["emotions"]]
    for mine, theirs in zip(with_shared["emotions"], alone["emotions"], strict=True):
        assert [p["passage"] for p in mine["top"]] == [p["passage"] for p in theirs["top"]]
        np.testing.assert_allclose([p["score"] for p in mine["top"]], [p["score"] for p in theirs["top"]], atol=1e-3)
        np.testing.assert_allclose(mine["top"][0]["values"], theirs["top"][0]["values"], atol=2e-2)
    assert with_shared["precision"] == alone["precision"]


def test_corpus_scan_shares_no_pass_over_other_texts(
    tiny_model: HookedTransformer, reading_vectors: EmotionVectors
) -> None:
    stories = corpus_scan.scanned_stories(reading_vectors, "cpu")
    shortened = [s.text[:300] for s in stories]
    layers = list(reading_vectors.layers)
    assert corpus_scan.story_reducer(tiny_model, reading_vectors, "cpu", shortened, layers) is None
    assert corpus_scan.story_reducer(tiny_model, reading_vectors, "quick", [s.text for s in stories], layers) is None
    shared = SharedStoryPass(tiny_model, reading_vectors, "cpu", stories)
    shared.plan(["corpus_scan"])  # validation reused: the scan reads its own stories
    assert shared.scan_reducer is None


def test_descending_ranks() -> None:
    ranks = descending_ranks(np.array([[0.1, 0.5, -1.0], [3.0, 2.0, 1.0]]))
    assert ranks.tolist() == [[2, 1, 3], [1, 2, 3]]


def test_dialogue_spans_cover_turn_texts() -> None:
    dialogue = load_dialogues()[0]
    a_span = dialogue.spans[0][0]
    assert dialogue.text[a_span[0] : a_span[1]].startswith("The gallery called")
    assert dialogue.text.startswith(f"{dialogue.speakers[0]}: ")


def test_ridge_map_recovers_a_linear_map() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    truth = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    weights = ridge_map(features - features.mean(dim=0), (features - features.mean(dim=0)) @ truth.T, alpha=1e-6)
    torch.testing.assert_close(weights, truth, atol=1e-3, rtol=1e-3)
