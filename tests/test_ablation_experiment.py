"""The ablation experiment on the tiny model: structure, finite numbers, intervals around estimates, a real drop."""

from __future__ import annotations

import json

from helpers import check_estimate

from emolens.experiments import ablation
from emolens.report.page import Page


def test_ablation_quick_on_tiny_model(tiny_model, tiny_vectors):
    data = json.loads(json.dumps(ablation.run(tiny_model, tiny_vectors, profile="quick").to_dict()))
    assert data["emotions"] == ["happy", "calm", "sad"]
    assert data["n_stories"] == 6  # two validation stories each
    rows = data["per_layer"]
    assert [r["layer"] for r in rows] == [0, 1]
    for row in rows:
        for key in ("effect", "control", "valence", "valence_control", "feels", "feels_control"):
            check_estimate(row[key])
    for condition, matrix in data["drop_matrix"].items():
        for row, ablated_layer in zip(matrix, [r["layer"] for r in rows], strict=True):
            assert all(v is None for v in row[: ablated_layer + 1]), condition  # nothing is read upstream
            assert all(v is not None for v in row[ablated_layer + 1 :]), condition
    assert data["drop_matrix"]["emotion"] != data["drop_matrix"]["emotion_random"]
    page = Page("ablation")
    ablation.render(page, data)
    assert "ablation" in page.render()
