"""The packaged corpora (stories, neutral text, prompt sets) and the validator for corpus files.

Story files are JSON lines ``{"emotion", "topic_id", "person", "split", "text"}``; neutral
files are JSON lines ``{"kind": "dialogue"|"expository", "topic", "text"}``; neutral
*narrative* files are JSON lines ``{"kind": "narrative", "topic_id", "person", "text"}``
(emotionally flat paragraphs in the stories' form and topics). One function,
:func:`validate_corpus`, checks any kind: schema, counts per emotion and split, lengths,
forbidden words (the emotion word, words sharing its stem, listed synonyms; for neutral
narratives those of all 171 concepts), exact and near duplicates (word 5-gram shingle overlap).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from emolens.concepts import emotions

STORY_FIELDS = ("emotion", "topic_id", "person", "split", "text")
NEUTRAL_FIELDS = ("kind", "topic", "text")
NARRATIVE_FIELDS = ("kind", "topic_id", "person", "text")
NARRATIVE_WORDS = (105, 151)
STORY_WORDS = (60, 160)
NEAR_DUPLICATE_JACCARD = 0.5


class CorpusError(ValueError):
    """A corpus file failed validation; the message lists every problem found."""


@dataclass(frozen=True)
class Story:
    emotion: str
    topic_id: int
    person: str
    split: str
    text: str


def data_path(name: str) -> Path:
    """Path of a packaged data file (``emolens/data/NAME``)."""
    return Path(str(files("emolens.data").joinpath(name)))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a corrupt line is a CorpusError naming file and line."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove that line") from None
    return rows


def load_stories(path: str | Path | None = None, split: Literal["train", "validation"] | None = None) -> list[Story]:
    """Stories of a story file (default: the packaged corpus), optionally one split."""
    rows = read_jsonl(path or data_path("stories.jsonl"))
    stories = [Story(**{k: row[k] for k in STORY_FIELDS}) for row in rows]
    return [s for s in stories if split is None or s.split == split]


def load_neutral(path: str | Path | None = None) -> list[str]:
    """Texts of a neutral file (default: the packaged dialogues and expository paragraphs)."""
    return [row["text"] for row in read_jsonl(path or data_path("neutral.jsonl"))]


def load_neutral_narrative(path: str | Path | None = None) -> list[str]:
    """Texts of a neutral narrative file (default: the packaged emotionally flat story paragraphs)."""
    return load_neutral(path or data_path("neutral_narrative.jsonl"))


def topics() -> list[str]:
    """The 100 story premises; a story's ``topic_id`` indexes this list."""
    return [line for line in data_path("topics.txt").read_text().splitlines() if line.strip()]


@cache
def forbidden_patterns() -> dict[str, list[re.Pattern[str]]]:
    """Per emotion: whole-word patterns a story about it may not contain."""
    table = json.loads(data_path("forbidden_words.json").read_text())
    return {
        emotion: [re.compile(rf"\b{stem}\b") for stem in entry["stems"]]
        + [re.compile(rf"\b{re.escape(word)}\b") for word in entry["synonyms"]]
        for emotion, entry in table.items()
    }


def validate_corpus(
    path: str | Path,
    kind: Literal["stories", "neutral", "narrative"] | None = None,
    min_per_emotion: int = 12,
    min_validation: int = 2,
    all_emotions: bool = True,
) -> list[dict[str, Any]]:
    """Validate a corpus file and return its rows, or raise CorpusError listing every problem.

    ``kind`` defaults to the file's fields (``emotion`` -> stories, ``kind: narrative`` ->
    narrative, other ``kind`` -> neutral).
    For stories, ``all_emotions`` requires every one of the 171 concepts to be present.
    """
    rows = read_jsonl(path)
    if not rows:
        raise CorpusError(f"{path}: empty corpus file; it needs at least one JSON line")
    if kind is None:
        kind = "stories" if "emotion" in rows[0] else "narrative" if rows[0].get("kind") == "narrative" else "neutral"
    if kind == "stories":
        problems = _story_problems(rows, min_per_emotion, min_validation, all_emotions)
    elif kind == "narrative":
        problems = _narrative_problems(rows)
    else:
        problems = _neutral_problems(rows)
    problems += _duplicate_problems([str(row.get("text", "")) for row in rows])
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise CorpusError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    return rows


def story_row_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with one story row (schema, length, paragraph, labels, forbidden words)."""
    missing = [f for f in STORY_FIELDS if f not in row]
    if missing:
        return [f"missing field(s) {', '.join(missing)}"]
    emotion, text = row["emotion"], str(row["text"])
    if emotion not in emotions():
        return [f"unknown emotion {emotion!r}"]
    problems = []
    words = len(text.split())
    if not STORY_WORDS[0] <= words <= STORY_WORDS[1]:
        problems.append(f"{words} words; stories need {STORY_WORDS[0]}-{STORY_WORDS[1]}")
    if "\n" in text:
        problems.append("a story is one paragraph (no newlines)")
    if row["person"] not in ("first", "third") or row["split"] not in ("train", "validation"):
        problems.append("person must be first|third and split train|validation")
    lowered = text.lower()
    for pattern in forbidden_patterns()[emotion]:
        if match := pattern.search(lowered):
            problems.append(f"names its emotion {emotion!r} with {match.group(0)!r}")
    return problems


def _story_problems(
    rows: list[dict[str, Any]], min_per_emotion: int, min_validation: int, all_emotions: bool
) -> list[str]:
    known = set(emotions())
    problems: list[str] = []
    by_emotion: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for number, row in enumerate(rows, 1):
        row_problems = story_row_problems(row)
        problems += [f"line {number}: {problem}" for problem in row_problems]
        if row.get("emotion") in known and not any(p.startswith("missing") for p in row_problems):
            by_emotion[row["emotion"]].append(row)
    for emotion, group in by_emotion.items():
        topics_used = Counter(row["topic_id"] for row in group)
        repeated = sorted(t for t, c in topics_used.items() if c > 1)
        if repeated:
            problems.append(f"{emotion!r}: topic(s) {repeated} used more than once")
        if len(group) < min_per_emotion:
            problems.append(f"{emotion!r}: {len(group)} stories; needs at least {min_per_emotion}")
        if sum(row["split"] == "validation" for row in group) < min_validation:
            problems.append(f"{emotion!r}: fewer than {min_validation} validation stories")
    if all_emotions:
        absent = [e for e in emotions() if e not in by_emotion]
        if absent:
            problems.append(f"no stories for {len(absent)} emotion(s): {', '.join(absent[:10])}")
    return problems


_EMOTIONAL_WORDS = re.compile(r"\b(thanks?|sorry|glad|love|hate|feel(ing|ings|s)?|unfortunately|wonderful)\b")


def _neutral_problems(rows: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for number, row in enumerate(rows, 1):
        missing = [f for f in NEUTRAL_FIELDS if f not in row]
        if missing:
            problems.append(f"line {number}: missing field(s) {', '.join(missing)}")
            continue
        text = str(row["text"])
        if row["kind"] not in ("dialogue", "expository"):
            problems.append(f"line {number}: kind must be dialogue|expository")
        if row["kind"] == "dialogue":
            turns = text.split("\n")
            expected = ["Person: " if i % 2 == 0 else "AI: " for i in range(len(turns))]
            if not 2 <= len(turns) <= 6 or any(not t.startswith(e) for t, e in zip(turns, expected, strict=True)):
                problems.append(f"line {number}: a dialogue is 2-6 alternating 'Person: '/'AI: ' lines")
        if len(text.split()) < 40:
            problems.append(f"line {number}: {len(text.split())} words; neutral texts need at least 40")
        if match := _EMOTIONAL_WORDS.search(text.lower()):
            problems.append(f"line {number}: emotional word {match.group(0)!r} in neutral text")
    return problems


def narrative_row_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with one neutral narrative row (schema, length, paragraph, person, any emotion word)."""
    missing = [f for f in NARRATIVE_FIELDS if f not in row]
    if missing:
        return [f"missing field(s) {', '.join(missing)}"]
    text, problems = str(row["text"]), []
    if row["kind"] != "narrative":
        problems.append("kind must be narrative")
    if not isinstance(row["topic_id"], int) or not 0 <= row["topic_id"] < len(topics()):
        problems.append(f"topic_id must be an int line index of topics.txt (0-{len(topics()) - 1})")
    if row["person"] not in ("first", "third"):
        problems.append("person must be first|third")
    words = len(text.split())
    if not NARRATIVE_WORDS[0] <= words <= NARRATIVE_WORDS[1]:
        problems.append(f"{words} words; neutral narratives need {NARRATIVE_WORDS[0]}-{NARRATIVE_WORDS[1]}")
    if "\n" in text:
        problems.append("a narrative is one paragraph (no newlines)")
    lowered = text.lower()
    for emotion, patterns in forbidden_patterns().items():
        for pattern in patterns:
            if match := pattern.search(lowered):
                problems.append(f"names the emotion {emotion!r} with {match.group(0)!r}")
    if match := _EMOTIONAL_WORDS.search(lowered):
        problems.append(f"emotional word {match.group(0)!r} in neutral text")
    return problems


def _narrative_problems(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"line {number}: {problem}" for number, row in enumerate(rows, 1) for problem in narrative_row_problems(row)
    ]


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _duplicate_problems(texts: list[str]) -> list[str]:
    """Exact duplicates, and pairs whose 5-gram shingle sets overlap (Jaccard) >= 0.5."""
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for index, text in enumerate(texts):
        key = " ".join(text.lower().split())
        if key in first_seen:
            problems.append(f"line {index + 1}: exact duplicate of line {first_seen[key] + 1}")
        first_seen.setdefault(key, index)
    shingle_sets = [_shingles(t) for t in texts]
    holders: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, shingles in enumerate(shingle_sets):
        for shingle in shingles:
            holders[shingle].append(index)
    shared: Counter[tuple[int, int]] = Counter()
    for indices in holders.values():
        if 1 < len(indices) <= 50:  # a 5-gram in more than 50 texts is a stock phrase
            shared.update(combinations(indices, 2))
    for (a, b), count in sorted(shared.items()):
        union = len(shingle_sets[a] | shingle_sets[b])
        if count / union >= NEAR_DUPLICATE_JACCARD and texts[a].strip() != texts[b].strip():
            problems.append(f"line {b + 1}: near duplicate of line {a + 1} (shingle Jaccard {count / union:.2f})")
    return problems
