"""Layers experiment on the tiny model: structure, finite numbers, CIs, and the pieces' correctness."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from emolens.corpus import load_neutral, load_stories
from emolens.experiments import layers
from emolens.fit import fit_emotion_vectors
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "joyful", "angry", "sad", "bored", "excited", "proud"]


@pytest.fixture(scope="module")
def layer_vectors(tiny_model) -> EmotionVectors:
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    first_two = [s for e in EMOTIONS for s in [s for s in stories if s.emotion == e][:2]]
    chosen = [replace(s, text=" ".join(s.text.split()[:25])) for s in first_two]
    return fit_emotion_vectors(
        tiny_model, stories=chosen, neutral=load_neutral()[:4], emotions=EMOTIONS, window_start=20
    )


@pytest.fixture(scope="module")
def layers_data(tiny_model, layer_vectors) -> dict:
    return layers.run(tiny_model, layer_vectors, profile="quick").to_dict()


def test_run_quick_structure_and_cis(layers_data, layer_vectors) -> None:
    data = layers_data
    json.dumps(data, allow_nan=False)
    n = len(layer_vectors.layers)
    assert np.array(data["cka"]).shape == (n, n) and np.allclose(np.diag(data["cka"]), 1, atol=1e-6)
    assert np.allclose(np.diag(data["cosine_correlation"]), 1, atol=1e-6)
    assert len(data["items"]) == 6 and all(item["shared_tokens"] >= layers.MIN_SHARED_TOKENS for item in data["items"])
    assert [row["layer"] for row in data["per_layer"]] == layer_vectors.layers
    for row in data["per_layer"]:
        for key in ("emotional_distance", "control_distance", "difference", "valence_alignment", "control_alignment"):
            estimate = row[key]
            assert all(math.isfinite(estimate[k]) for k in ("value", "low", "high")) and estimate["n"] == 6
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
        assert row["emotional_distance"]["value"] > 0 and row["control_distance"]["value"] > 0


def test_render(layers_data) -> None:
    from emolens.report.page import Page

    page = Page("layers")
    layers.render(page, layers_data)
    html = page.render()
    assert html.count("<img") == 2 and "After the funeral" in html


def test_suffix_is_really_shared_and_readings_match_read(tiny_model, layer_vectors) -> None:
    item = layers.ITEMS[0]
    texts = item.texts()
    n = layers.shared_suffix_length(tiny_model, texts)
    assert n >= len(item.suffix.encode()) - 1  # byte tokens: the whole clause (the comma's byte may merge)
    readings = layers.suffix_readings(tiny_model, layer_vectors, texts, [n] * 4)
    layer = layer_vectors.default_layer
    _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(texts[0]), names_filter=f"blocks.{layer}.hook_resid_post")
    reference = layer_vectors.project(cache[f"blocks.{layer}.hook_resid_post"][0, -n:], layer)
    assert torch.allclose(readings[0][layer_vectors.layer_index(layer)], reference, atol=1e-4)


def test_every_item_has_four_distinct_openings() -> None:
    assert len(layers.ITEMS) >= 12
    for item in layers.ITEMS:
        openings = {item.negative, item.positive, item.neutral_a, item.neutral_b}
        assert len(openings) == 4 and item.suffix.startswith(",")


def test_linear_cka_properties() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    assert layers.linear_cka(x, x @ rotation * 3) == pytest.approx(1.0, abs=1e-6)  # invariant to rotation and scale
    assert layers.linear_cka(x, torch.randn(30, 8, generator=generator)) < 0.6


def test_headlines(layers_data) -> None:
    rows = layers.headlines(layers_data)
    assert len(rows) == 2 and all(len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)
