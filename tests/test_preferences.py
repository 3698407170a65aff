"""The preferences experiment on the tiny model: structure, finite numbers, intervals around their estimates."""

from __future__ import annotations

import json

from helpers import check_estimate

from emolens.experiments import preferences
from emolens.report.page import Page


def test_pair_design_is_balanced_and_full_profile_has_every_ordered_pair():
    pairs = preferences.pair_design(64, (1, 7, 23), seed=0)
    assert len(pairs) == 192 and len(set(pairs)) == 192
    counts = [sum(k in p for p in pairs) for k in range(64)]
    assert set(counts) == {6}
    assert len(preferences.pair_design(64, None, seed=0)) * 2 == 4032


def test_prompt_positions_cover_the_activity_text(tiny_model):
    activities = preferences.load_activities(1)
    prompts = preferences.build_prompts(tiny_model, activities, [(0, 1)])
    assert prompts.first == [0, 1] and prompts.second == [1, 0]
    tokens = tiny_model.to_str_tokens(prompts.texts[0])
    first_positions, _ = prompts.positions[0]
    assert "".join(tokens[p] for p in first_positions) == activities[0]["text"]
    assert prompts.texts[0].endswith("(")


def test_preferences_quick_on_tiny_model(tiny_model, tiny_vectors):
    data = json.loads(json.dumps(preferences.run(tiny_model, tiny_vectors, profile="quick").to_dict()))
    assert len(data["activities"]) == 8
    assert data["n_prompts"] == 32
    assert sum(a["steered"] for a in data["activities"]) == 4
    assert abs(sum(a["elo"]["value"] for a in data["activities"]) / 8 - 1500) < 1e-3
    for activity in data["activities"]:
        check_estimate(activity["elo"])
    check_estimate(data["position_bias"])
    assert len(data["emotions"]) == 3 and len(data["controls"]) == 2
    for row in data["emotions"]:
        check_estimate(row["probe_r"])
        check_estimate(row["effect"])
    check_estimate(data["effect_vs_probe"])
    check_estimate(data["control_effect"])
    page = Page("preferences")
    preferences.render(page, data)
    assert "preferences" in page.render()
    assert preferences.headlines(data)
