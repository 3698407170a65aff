"""Shared fixtures: a tiny random model for unit tests, packaged models for integration tests."""

from __future__ import annotations

import os

import pytest
import torch
from transformer_lens import HookedTransformer

from emolens.corpus import load_neutral, load_stories
from emolens.fit import fit_emotion_vectors
from emolens.models import load_model, tiny_random_model
from emolens.vectors import EmotionVectors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model() -> HookedTransformer:
    return tiny_random_model(seed=0)


@pytest.fixture(scope="session")
def gemma() -> HookedTransformer:
    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="session")
def smollm2() -> HookedTransformer:
    return load_model("smollm2-135m-instruct", device="cpu")


TINY_EMOTIONS = ["afraid", "calm", "happy", "joyful", "sad"]


@pytest.fixture(scope="session")
def tiny_vectors(tiny_model: HookedTransformer) -> EmotionVectors:
    """Vectors for five emotions fitted on the tiny model (two stories each, six neutral texts, window 20)."""
    stories = [s for s in load_stories(split="train") if s.emotion in TINY_EMOTIONS]
    picked = [s for e in TINY_EMOTIONS for s in [x for x in stories if x.emotion == e][:2]]
    return fit_emotion_vectors(
        tiny_model, stories=picked, neutral=load_neutral()[:6], emotions=TINY_EMOTIONS, window_start=20
    )
