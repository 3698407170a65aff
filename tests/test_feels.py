"""The feels experiment on the tiny model: structure, finite numbers, intervals around their estimates."""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers import check_estimate

from emolens.experiments import feels
from emolens.report.page import Page
from emolens.steer import steer


def test_feels_quick_on_tiny_model(tiny_model, tiny_vectors):
    data = json.loads(json.dumps(feels.run(tiny_model, tiny_vectors, profile="quick").to_dict()))
    assert data["emotions"] == ["happy", "calm", "sad"]
    assert data["alphas"] == [-2.0, -0.5, 0.5, 2.0]
    assert [row["layer"] for row in data["per_layer"]] == [0, 2]
    for row in data["per_layer"]:
        for key in ("effect", "control", "difference"):
            check_estimate(row[key])
        assert row["alpha"] > 0
    assert len(data["grid"]) == len(data["per_layer"]) * len(data["alphas"])
    assert all(cell["neutral_kl"] >= 0 for cell in data["grid"])
    assert len(data["matrix"]) == len(data["emotions"])
    assert data["generations"] and all(g["steered"] != g["prompt"] for g in data["generations"])
    page = Page("feels")
    feels.render(page, data)
    assert "feels" in page.render()


def test_batched_continuations_match_one_steered_generation_at_a_time(tiny_model, tiny_vectors):
    prompt, layer, alpha, n = "The letter arrived this morning and I", 1, 2.0, 8
    rows = feels.continuations(tiny_model, tiny_vectors, [prompt], ["happy", "sad"], layer, alpha, n)
    tokens = tiny_model.to_tokens(prompt)

    def alone() -> str:  # the slow reference: one generation, steered (or not) by ``steer``
        with torch.inference_mode():
            output = tiny_model.generate(tokens, max_new_tokens=n, do_sample=False, verbose=False)
        return str(tiny_model.tokenizer.decode(output[0, tokens.shape[1] :], skip_special_tokens=True))

    assert [(row["emotion"], row["alpha"]) for row in rows] == [
        ("happy", 2.0),
        ("happy", -2.0),
        ("sad", 2.0),
        ("sad", -2.0),
    ]
    assert all(row["unsteered"] == alone() for row in rows)
    for row in rows:
        with steer(tiny_model, tiny_vectors, row["emotion"], row["alpha"], layers=[layer], positions="all"):
            assert row["steered"] == alone()
    assert any(row["steered"] != row["unsteered"] for row in rows)


def test_dominance_rows_follow_the_emotion_order_so_controls_pair_with_their_emotions():
    base = {"happy": np.zeros(2), "calm": np.zeros(2), "sad": np.zeros(2)}

    def row(emotion: str, own: float) -> dict:
        changes = {w: [own, own] if w == emotion else [0.0, 0.0] for w in base}
        return {"emotion": emotion, "target_logprob_by_prompt": changes}

    shuffled = [row("sad", 3.0), row("happy", 1.0), row("calm", 2.0)]
    table = feels.dominance_by_emotion(shuffled, base, ["happy", "calm", "sad"])
    assert table.shape == (3, 2)
    np.testing.assert_allclose(table[:, 0], [1.0, 2.0, 3.0])
