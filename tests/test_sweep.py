"""The sweep engine against the obvious loop, and its resumable JSONL file."""

from __future__ import annotations

import json

import pytest
import torch

import emolens
from emolens.jsonl_store import JsonlStore
from emolens.sweep import sweep, target_token_ids
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "joyful"]
PROMPTS = ["After the long drive home she felt", "He read the letter twice and", "The room was quiet. I"]
TARGETS = ["calm", "afraid"]


@pytest.fixture(scope="module")
def vecs(tiny_vectors) -> EmotionVectors:
    return tiny_vectors


def naive_cell(model, vecs, emotion, layer, alpha, intervention, positions="all", control=None):
    """What a user would write: one prompt at a time, full logits, inside the context manager."""
    with torch.inference_mode():
        return _naive_cell(model, vecs, emotion, layer, alpha, intervention, positions, control)


def _naive_cell(model, vecs, emotion, layer, alpha, intervention, positions, control):
    target_ids = target_token_ids(model, TARGETS)
    logprobs, kls = [], []
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        base = torch.log_softmax(model(tokens)[0, -1], dim=-1)
        if intervention == "steer":
            context = emolens.steer(model, vecs, emotion, alpha, [layer], positions=positions, control=control)
        else:
            context = emolens.ablate(model, vecs, emotion, [layer], control=control)
        with context:
            steered = torch.log_softmax(model(tokens)[0, -1], dim=-1)
        logprobs.append(steered[target_ids])
        kls.append(float((base.exp() * (base - steered)).sum()))
    return torch.stack(logprobs).mean(dim=0), sum(kls) / len(kls)


@pytest.mark.parametrize(
    ("intervention", "positions", "control", "alphas"),
    [("steer", "all", None, [-2.0, 0.0, 1.5]), ("steer", "last", "random", [1.0]), ("ablate", "all", None, [1.0])],
)
def test_rows_equal_naive_loop(tiny_model, vecs, intervention, positions, control, alphas):
    rows = sweep(
        tiny_model, vecs, PROMPTS, ["calm", "joyful"], [0, 2], alphas, TARGETS, positions, intervention, control,
        progress=False,
    )  # fmt: skip
    assert len(rows) == 2 * 2 * len(alphas)
    for row in rows:
        expected_logprob, expected_kl = naive_cell(
            tiny_model, vecs, row["emotion"], row["layer"], row["alpha"], intervention, positions, control
        )
        got = torch.tensor([row["target_logprob"][word] for word in TARGETS])
        torch.testing.assert_close(got, expected_logprob, atol=1e-4, rtol=1e-4)
        assert row["kl"] == pytest.approx(expected_kl, abs=1e-4)
        assert row["n_prompts"] == len(PROMPTS)
    zero = [row for row in rows if row["alpha"] == 0.0]
    assert all(row["kl"] < 1e-6 for row in zero)


def test_killed_and_resumed_equals_uninterrupted(tiny_model, vecs, tmp_path, monkeypatch):
    grid = {"emotions": EMOTIONS, "layers": [0, 1, 2], "alphas": [-1.0, 1.0], "targets": TARGETS, "progress": False}
    whole = sweep(tiny_model, vecs, PROMPTS, out=tmp_path / "whole.jsonl", **grid)

    path = tmp_path / "resumed.jsonl"
    original = JsonlStore.append
    written = {"n": 0}

    def dying_append(self, row):
        if written["n"] == 7:
            raise KeyboardInterrupt
        written["n"] += 1
        original(self, row)

    monkeypatch.setattr(JsonlStore, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny_model, vecs, PROMPTS, out=path, **grid)
    monkeypatch.setattr(JsonlStore, "append", original)
    with path.open("a") as handle:
        handle.write('{"key": "torn')  # a write cut off by the kill
    resumed = sweep(tiny_model, vecs, PROMPTS, out=path, **grid)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(whole) == 18
    assert len({row["key"] for row in lines}) == 18
    for a, b in zip(whole, resumed, strict=True):
        assert a["key"] == b["key"]
        assert a["target_logprob"] == pytest.approx(b["target_logprob"], abs=1e-6)


def test_changed_setting_never_reuses_rows(tiny_model, vecs, tmp_path):
    path = tmp_path / "s.jsonl"
    first = sweep(tiny_model, vecs, PROMPTS, ["calm"], [1], [1.0], TARGETS, out=path, progress=False)
    other = sweep(tiny_model, vecs, PROMPTS, ["calm"], [1], [1.0], TARGETS, "last", out=path, progress=False)
    assert first[0]["key"] != other[0]["key"]
    assert first[0]["target_logprob"] != other[0]["target_logprob"]
    assert len(path.read_text().splitlines()) == 2


def test_bad_sweep_input(tiny_model, vecs):
    with pytest.raises(ValueError, match="finite"):
        sweep(tiny_model, vecs, PROMPTS, ["calm"], [1], [float("inf")], progress=False)
    with pytest.raises(ValueError, match="generated"):
        sweep(tiny_model, vecs, PROMPTS, ["calm"], [1], [1.0], positions="generated", progress=False)
    with pytest.raises(ValueError, match="calm"):
        sweep(tiny_model, vecs, PROMPTS, ["clam"], [1], [1.0], progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        sweep(tiny_model, vecs, [], ["calm"], [1], [1.0], progress=False)
