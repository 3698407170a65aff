"""Writing more stories with any chat model the user can load, under the corpus rules.

Each story is sampled from a prompt that names the topic, the person, and the emotion to
convey without naming it; a sample that breaks a row rule (length, one paragraph,
forbidden words) is retried up to ``attempts`` times and otherwise recorded as rejected.
The accepted rows go through the same validator as the packaged corpus. Useful on a GPU
with a larger model; on the packaged 135M/270M models the text is weak and most samples
are rejected.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from emolens.concepts import check_emotion
from emolens.corpus import story_row_problems, topics
from emolens.files import atomic_write_text
from emolens.models import chat_prompt

PROMPT = (
    "Write one paragraph of about 110 words: a short, original story in the {person} person about this "
    "situation: {topic} The main character is {emotion}. Never use the word '{emotion}' or a synonym of it: "
    "show the feeling only through actions, bodily sensations, dialogue, thoughts and the situation."
)


@dataclass
class Generated:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # rows with their "problems"


def generate_stories(
    model: HookedTransformer,
    emotions: Sequence[str],
    n_topics: int = 12,
    per_topic: int = 1,
    attempts: int = 3,
    max_new_tokens: int = 220,
    temperature: float = 0.9,
    seed: int = 0,
) -> Generated:
    """Sample ``per_topic`` stories on ``n_topics`` random topics for each emotion."""
    wanted = [check_emotion(e) for e in emotions]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    premises = topics()
    out = Generated()
    jobs = [(e, t) for e in wanted for t in rng.sample(range(len(premises)), min(n_topics, len(premises)))]
    for index, (emotion, topic_id) in enumerate(tqdm(jobs * per_topic, desc="stories", unit="story")):
        person = "first" if index % 2 == 0 else "third"
        row: dict[str, Any] = {"emotion": emotion, "topic_id": topic_id, "person": person, "split": "train"}
        prompt = chat_prompt(
            model,
            [{"role": "user", "content": PROMPT.format(person=person, topic=premises[topic_id], emotion=emotion)}],
        )
        for _ in range(attempts):
            row["text"] = _sample(model, prompt, max_new_tokens, temperature)
            problems = story_row_problems(row)
            if not problems:
                out.accepted.append(dict(row))
                break
        else:
            out.rejected.append({**row, "problems": problems})
    _assign_validation(out.accepted)
    return out


def _sample(model: HookedTransformer, prompt: str, max_new_tokens: int, temperature: float) -> str:
    tokens = model.to_tokens(prompt, prepend_bos=model.cfg.default_prepend_bos)
    with torch.inference_mode():
        output = model.generate(
            tokens, max_new_tokens=max_new_tokens, temperature=temperature, verbose=False, stop_at_eos=True
        )
    assert model.tokenizer is not None and isinstance(output, torch.Tensor)
    text = str(model.tokenizer.decode(output[0, tokens.shape[1] :], skip_special_tokens=True))
    paragraphs = [p.strip() for p in text.split("\n") if p.strip()]
    return paragraphs[0] if paragraphs else ""


def _assign_validation(rows: list[dict[str, Any]]) -> None:
    """Every sixth accepted story of an emotion goes to the validation split (10 train / 2 validation of 12)."""
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["emotion"]] = seen.get(row["emotion"], 0) + 1
        row["split"] = "validation" if seen[row["emotion"]] % 6 == 0 else "train"


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON lines atomically (temporary file, then rename)."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
