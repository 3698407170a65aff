"""The dilemmas experiment on the tiny model: structure, finite numbers, intervals around their estimates."""

from __future__ import annotations

import json

from helpers import check_estimate

from emolens.corpus import data_path, read_jsonl
from emolens.experiments import dilemmas
from emolens.report.page import Page


def test_packaged_dilemmas_have_eight_paraphrases_per_case():
    rows = read_jsonl(data_path("dilemmas.jsonl"))
    for case in dilemmas.CASES:
        mine = [r for r in rows if r["case"] == case]
        assert len(mine) >= 8
        assert len({r["situation"] for r in mine}) == len(mine)
        assert all(r["aligned"] != r["misaligned"] for r in mine)
    assert all(len(r["failures"]) == len(dilemmas.ATTEMPTS) for r in rows if r["case"] == "shortcut")


def test_choice_prompts_counterbalance_the_options(tiny_model):
    rows = dilemmas.load_dilemmas(1)
    texts, misaligned_first = dilemmas.choice_prompts(tiny_model, rows)
    assert list(misaligned_first) == [False, True, False, True]
    assert f"(A) {rows[0]['misaligned']}" in texts[1] and f"(B) {rows[0]['misaligned']}" in texts[0]


def test_dilemmas_quick_on_tiny_model(tiny_model, tiny_vectors):
    data = json.loads(json.dumps(dilemmas.run(tiny_model, tiny_vectors, profile="quick").to_dict()))
    assert data["n_paraphrases"] == {"shutdown": 2, "shortcut": 2}
    for case in dilemmas.CASES:
        check_estimate(data["baseline"][case])
    # 3 emotions + 1 random control, 2 alphas, 2 cases
    assert len(data["sweep"]) == 4 * 2 * 2
    assert sum(r["control"] for r in data["sweep"]) == 4
    for row in data["sweep"]:
        check_estimate(row["p_misaligned"])
        check_estimate(row["change"])
        assert 0 <= row["p_misaligned"]["value"] <= 1
    line = data["timeline"]
    assert len(line["rounds"]) == len(dilemmas.ATTEMPTS) and line["n_transcripts"] == 2
    for name in line["emotions"]:
        check_estimate(line["climb"][name])
        for entry in line["rounds"]:
            check_estimate(entry[name])
    page = Page("dilemmas")
    dilemmas.render(page, data)
    assert "dilemmas" in page.render()
    assert len(dilemmas.headlines(data)) == 2
