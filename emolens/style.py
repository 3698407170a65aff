"""The *form* of a story, apart from its feeling: dialogue, person, length, body and thought words.

:func:`story_form` measures one text; :func:`form_matrix` a list of them, as a
``text x feature`` array in the order of :data:`FORM_FEATURES`. Features are
deliberately crude and transparent (word lists, quote marks), so that a geometry
explained by them is explained by *style*, not by a model of emotion:

- ``dialogue_share``: fraction of words inside double quotes;
- ``first_person``: share of pronouns that are first person singular (I, me, my, ...);
- ``words``: length in words;
- ``mean_sentence_words``: words per sentence;
- ``body_rate`` / ``thought_rate``: words per 100 from a body lexicon (hands, chest,
  breath, ...) and a thought lexicon (thought, knew, wondered, ...);
- ``question_rate`` / ``exclamation_rate``: ``?`` and ``!`` per 100 words.

:func:`explained_by_form` is the share of variance (R^2, in-sample and
cross-validated over units) of each column of ``scores`` (e.g. principal component
scores of emotion vectors) that a linear model of the form features explains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORM_FEATURES = (
    "dialogue_share",
    "first_person",
    "words",
    "mean_sentence_words",
    "body_rate",
    "thought_rate",
    "question_rate",
    "exclamation_rate",
)


def _lexicon(words: str) -> frozenset[str]:
    return frozenset(words.split())


BODY_WORDS = _lexicon(
    """
    arm arms back belly blood bone bones breath breathe breathed breathing brow cheek cheeks chest chin
    ear ears elbow eye eyes face fingers fingertips fist fists foot feet forehead gut hair hand hands head
    heart heartbeat heel hip hips jaw knee knees leg legs lip lips lungs mouth muscles nape neck nose palm
    palms pulse ribs scalp shoulder shoulders shiver shivered skin spine stomach sweat sweating sweaty
    teeth temples thigh thighs throat thumb toes tongue trembled trembling wrist wrists
    """
)
THOUGHT_WORDS = _lexicon(
    """
    assume assumed believe believed consider considered decide decided doubt doubted figure figured
    guess guessed idea imagine imagined knew know knowing maybe memory mind perhaps ponder pondered
    realise realised realize realized reckon remember remembered suppose supposed think thinking
    thought thoughts understand understood wonder wondered wondering
    """
)
FIRST_PERSON = _lexicon("i me my mine myself i'm i'd i've i'll")
THIRD_PERSON = _lexicon("he him his himself she her hers herself they them their themselves")
_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_QUOTED = re.compile(r'"[^"]*"|“[^”]*”')
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$|\")")


@dataclass(frozen=True)
class StoryForm:
    """Form features of one text (see the module docstring)."""

    dialogue_share: float
    first_person: float
    words: float
    mean_sentence_words: float
    body_rate: float
    thought_rate: float
    question_rate: float
    exclamation_rate: float

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in FORM_FEATURES], dtype=float)


def story_form(text: str) -> StoryForm:
    """Measure the form of one text; an empty text is a ValueError."""
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        raise ValueError("empty text: story_form needs at least one word")
    n = len(words)
    quoted = sum(len(_WORD.findall(span)) for span in _QUOTED.findall(text))
    first = sum(w in FIRST_PERSON for w in words)
    third = sum(w in THIRD_PERSON for w in words)
    sentences = max(1, len(_SENTENCE_END.findall(text)))
    return StoryForm(
        dialogue_share=min(1.0, quoted / n),
        first_person=first / (first + third) if first + third else 0.0,
        words=float(n),
        mean_sentence_words=n / sentences,
        body_rate=100 * sum(w in BODY_WORDS for w in words) / n,
        thought_rate=100 * sum(w in THOUGHT_WORDS for w in words) / n,
        question_rate=100 * text.count("?") / n,
        exclamation_rate=100 * text.count("!") / n,
    )


def form_matrix(texts: Sequence[str]) -> np.ndarray:
    """``text x feature`` array of :func:`story_form` (columns in :data:`FORM_FEATURES` order)."""
    return np.stack([story_form(t).as_array() for t in texts])


def group_means(features: np.ndarray, groups: Sequence[int] | np.ndarray, n_groups: int) -> np.ndarray:
    """``group x feature`` mean of the rows of ``features`` in each group (e.g. per emotion)."""
    labels = np.asarray(groups)
    missing = [g for g in range(n_groups) if not (labels == g).any()]
    if missing:
        raise ValueError(f"group(s) {missing[:5]} have no rows; pass only groups that have texts")
    return np.stack([features[labels == g].mean(axis=0) for g in range(n_groups)])


def standardise(features: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance (constant columns left at zero)."""
    centred = features - features.mean(axis=0)
    scale = centred.std(axis=0)
    return centred / np.where(scale > 0, scale, 1.0)


@dataclass(frozen=True)
class FormFit:
    """How much of one score column the form features explain."""

    r2: float  # in-sample R^2 of least squares on the standardised features
    r2_cv: float  # cross-validated R^2 (folds over units); may be negative
    correlations: dict[str, float]  # Pearson r of each feature with the scores


def explained_by_form(features: np.ndarray, scores: np.ndarray, folds: int = 10, seed: int = 0) -> list[FormFit]:
    """Per column of ``scores`` (``unit x column``), the R^2 of a linear model of ``features`` (``unit x feature``)."""
    if features.shape[0] != scores.shape[0]:
        raise ValueError(
            f"features and scores must have one row per unit, got {features.shape[0]} and {scores.shape[0]}"
        )
    x = np.column_stack([np.ones(len(features)), standardise(features)])
    order = np.random.default_rng(seed).permutation(len(features))
    fold_of = np.empty(len(features), dtype=int)
    fold_of[order] = np.arange(len(features)) % folds
    out = []
    for column in scores.T:
        fitted = x @ np.linalg.lstsq(x, column, rcond=None)[0]
        total = float(((column - column.mean()) ** 2).sum())
        predicted = np.empty_like(column)
        for fold in range(folds):
            test = fold_of == fold
            coef = np.linalg.lstsq(x[~test], column[~test], rcond=None)[0]
            predicted[test] = x[test] @ coef
        correlations = {
            name: float(np.corrcoef(features[:, i], column)[0, 1]) if np.ptp(features[:, i]) > 0 else 0.0
            for i, name in enumerate(FORM_FEATURES)
        }
        out.append(
            FormFit(
                r2=1 - float(((column - fitted) ** 2).sum()) / total,
                r2_cv=1 - float(((column - predicted) ** 2).sum()) / total,
                correlations=correlations,
            )
        )
    return out
