"""The packaged corpora pass the validator, and the validator rejects each kind of bad file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from emolens.concepts import check_emotion, emotions, norms
from emolens.corpus import CorpusError, data_path, load_stories, read_jsonl, validate_corpus


def test_171_concepts_in_reference_order() -> None:
    reference = Path(__file__).parents[2] / "shared" / "reference" / "emotions171.txt"
    assert len(emotions()) == 171 and emotions()[0] == "afraid" and emotions()[-1] == "worthless"
    if reference.exists():
        assert list(emotions()) == [line.strip() for line in reference.read_text().splitlines() if line.strip()]


def test_unknown_emotion_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"closest: .*terrified"):
        check_emotion("terrifed")


def test_shipped_story_corpus_is_valid_and_complete() -> None:
    rows = validate_corpus(data_path("stories.jsonl"))
    counts = Counter(row["emotion"] for row in rows)
    assert set(counts) == set(emotions()) and min(counts.values()) >= 12
    splits = Counter((row["emotion"], row["split"]) for row in rows)
    assert all(splits[(e, "train")] >= 10 and splits[(e, "validation")] >= 2 for e in emotions())
    persons = Counter(row["person"] for row in rows)
    assert persons["first"] > 500 and persons["third"] > 500


def test_shipped_neutral_corpus_is_valid() -> None:
    rows = validate_corpus(data_path("neutral.jsonl"))
    kinds = Counter(row["kind"] for row in rows)
    assert kinds["dialogue"] >= 300 and kinds["expository"] >= 100


def test_prompt_sets_shapes_and_labels() -> None:
    known = set(emotions())
    scenarios = read_jsonl(data_path("scenarios.jsonl"))
    assert len(scenarios) >= 24 and all(set(s["emotions"]) | set(s["reply_emotions"]) <= known for s in scenarios)
    templates = json.loads(data_path("intensity.json").read_text())
    assert len(templates) >= 6
    for template in templates:
        assert "{x}" in template["template"] and len(template["values"]) >= 5
        assert set(template["expected"]) <= known and set(template["expected"].values()) <= {"up", "down"}
    activities = read_jsonl(data_path("activities.jsonl"))
    assert len(activities) == 64 and set(Counter(a["category"] for a in activities).values()) == {8}
    speakers = read_jsonl(data_path("speakers.jsonl"))
    assert len(speakers) >= 16 and all(set(s["emotions"].values()) <= known for s in speakers)
    for dialogue in speakers:
        assert {t["speaker"] for t in dialogue["turns"]} == set(dialogue["emotions"])


def test_prompt_sets_never_name_an_emotion() -> None:
    import re

    pattern = re.compile(r"\b(" + "|".join(re.escape(e) for e in emotions()) + r")\b")
    texts = [s["text"] for s in read_jsonl(data_path("scenarios.jsonl"))]
    texts += [t["text"] for d in read_jsonl(data_path("speakers.jsonl")) for t in d["turns"]]
    texts += [t["template"] for t in json.loads(data_path("intensity.json").read_text())]
    named = [(m.group(0), t[:50]) for t in texts if (m := pattern.search(t.lower()))]
    assert not named, named[:5]


def test_norms_cover_the_concepts() -> None:
    table = norms()
    assert list(table) == list(emotions())
    exact = [n for n in table.values() if n.mapping == "exact"]
    assert len(exact) >= 120 and all(n.valence is not None for n in exact)
    assert table["happy"].valence is not None and table["sad"].valence is not None
    assert table["happy"].valence > table["sad"].valence


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def good_rows() -> list[dict]:
    stories = [s for s in load_stories() if s.emotion == "calm"]
    return [dict(s.__dict__) for s in stories]


def test_validator_accepts_a_good_partial_file(tmp_path: Path, good_rows: list[dict]) -> None:
    assert len(validate_corpus(_write(tmp_path, good_rows), all_emotions=False)) == len(good_rows)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: rows[0].pop("person"), "missing field"),
        (lambda rows: rows[0].update(text=rows[0]["text"] + " She felt calm."), "names its emotion 'calm'"),
        (lambda rows: rows[0].update(text=rows[0]["text"] + " Everything was serene."), "names its emotion"),
        (lambda rows: rows[0].update(emotion="clam"), "unknown emotion 'clam'"),
        (lambda rows: rows.append(dict(rows[1])), "exact duplicate"),
        (lambda rows: rows[2].update(text=rows[3]["text"].replace(".", ";", 1)), "near duplicate"),
        (lambda rows: rows[0].update(text="Too short."), "words; stories need"),
        (lambda rows: [r.update(split="train") for r in rows], "validation stories"),
    ],
)
def test_validator_rejects_bad_files(tmp_path: Path, good_rows: list[dict], mutate, message: str) -> None:
    mutate(good_rows)
    with pytest.raises(CorpusError, match=message):
        validate_corpus(_write(tmp_path, good_rows), all_emotions=False)


def test_validator_rejects_corrupt_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"emotion": "calm"\n')
    with pytest.raises(CorpusError, match="not valid JSON"):
        validate_corpus(path)
    path.write_text("")
    with pytest.raises(CorpusError, match="empty corpus"):
        validate_corpus(path)


def test_validator_requires_all_emotions_by_default(tmp_path: Path, good_rows: list[dict]) -> None:
    with pytest.raises(CorpusError, match="no stories for 170 emotion"):
        validate_corpus(_write(tmp_path, good_rows))
