"""Shared fixtures: a tiny random model for unit tests, packaged models for integration tests."""

from __future__ import annotations

import os

import pytest
import torch
from transformer_lens import HookedTransformer

from emolens.models import load_model, tiny_random_model

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
