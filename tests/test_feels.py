"""The feels experiment on the tiny model: structure, finite numbers, intervals around their estimates."""

from __future__ import annotations

import json

from helpers import check_estimate

from emolens.experiments import feels
from emolens.report.page import Page


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
