"""The packaged neutral narrative corpus and its validator."""

from __future__ import annotations

import json

import pytest

from emolens.corpus import (
    CorpusError,
    data_path,
    forbidden_patterns,
    load_neutral_narrative,
    narrative_row_problems,
    read_jsonl,
    topics,
    validate_corpus,
)

FLAT = (
    "The bus left the depot at seven and followed its usual route along the river road. Mara sat near the back "
    "with a canvas bag on her knees and watched the shops open one after another. A man in a grey coat unlocked "
    "the hardware store and carried two ladders out to the pavement. At the third stop a group of students got "
    "on and stood holding the rail, talking about a chemistry assignment due on Friday. The driver announced the "
    "stops in a level voice. Near the library Mara pressed the button, stepped down onto the kerb and checked the "
    "time on the clock above the bank. It was twenty past seven, so she walked to the bakery on the corner, bought "
    "a loaf of rye bread and a newspaper, and went on toward the office on Mill Street."
)


def row(text: str = FLAT, **changes: object) -> dict[str, object]:
    return {"kind": "narrative", "topic_id": 3, "person": "third", "text": text, **changes}


def test_shipped_narratives_pass_the_validator() -> None:
    rows = validate_corpus(data_path("neutral_narrative.jsonl"))
    assert len(rows) >= 300
    assert {r["person"] for r in rows} == {"first", "third"}
    assert len({r["topic_id"] for r in rows}) == len(topics())  # every story topic has flat narratives
    assert load_neutral_narrative() == [r["text"] for r in rows]


def test_shipped_narratives_never_name_any_emotion() -> None:
    patterns = [p for emotion_patterns in forbidden_patterns().values() for p in emotion_patterns]
    for entry in read_jsonl(data_path("neutral_narrative.jsonl")):
        lowered = entry["text"].lower()
        assert not [p.pattern for p in patterns if p.search(lowered)], entry["text"][:80]


def test_flat_paragraph_passes() -> None:
    assert narrative_row_problems(row()) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"text": FLAT.replace("level voice", "calm voice")}, "names the emotion 'calm'"),
        ({"text": FLAT.replace("a group of", "a group of happy")}, "names the emotion"),
        ({"text": FLAT.replace("talking about", "saying sorry about")}, "emotional word 'sorry'"),
        ({"text": " ".join(FLAT.split()[:80])}, "80 words"),
        ({"text": FLAT.replace(". ", ".\n", 1)}, "one paragraph"),
        ({"person": "second"}, "person must be"),
        ({"topic_id": 100}, "topic_id"),
        ({"kind": "dialogue"}, "kind must be narrative"),
    ],
)
def test_bad_rows_are_named(changes: dict[str, object], problem: str) -> None:
    assert any(problem in p for p in narrative_row_problems(row(**changes)))


def test_file_level_validation_detects_kind_and_duplicates(tmp_path) -> None:
    path = tmp_path / "n.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [row(), row(topic_id=4)]) + "\n")
    with pytest.raises(CorpusError, match="exact duplicate"):
        validate_corpus(path)
    path.write_text(json.dumps(row(text=FLAT.replace("level", "cheerful"))) + "\n")
    with pytest.raises(CorpusError, match="names the emotion"):
        validate_corpus(path)
