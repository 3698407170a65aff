"""Corpus scan: which passages of a mixed corpus read highest on each emotion, and are they that emotion's?

The corpus mixes the packaged **validation** stories (held out from fitting; each labelled
with the emotion it was written for) and the packaged **neutral** texts (assistant
dialogues and expository paragraphs; note these were used in fitting, to centre and
denoise the vectors, so they are not held out). Training stories are never scanned.

Every passage is read once (one batched forward pass, stopped at the read layer, no
logits) with the calibrated readout: per-token readings of every emotion, and the passage
score is their mean over the window policy's positions (as ``vecs.score``). For each
scanned emotion (profile quick: a few; cpu/full: all fitted emotions):

- the **top passages** with, for the first few, their tokens and per-token readings of that
  emotion (for a coloured-tokens view in the report);
- **precision@k**: share of the top k passages written for that emotion (*exact*) or for
  an emotion in its k-means cluster at the read layer (*cluster*,
  ``emolens.validation.kmeans_labels`` on the unit vectors); neutral passages count as
  misses. Beside **chance** (the share of such passages in the corpus) and a **shuffled
  control** (passage labels permuted). CIs over emotions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import Story, load_neutral, load_stories
from emolens.experiments.runner import experiment_main
from emolens.experiments.scenarios import reading_setup
from emolens.extract import Batch, ReadOptions, reduce
from emolens.readout import fit_window_start, token_readings
from emolens.stats import estimate_text, mean_ci
from emolens.validation import kmeans_labels
from emolens.vectors import EmotionVectors

PROFILE_SIZES: dict[str, dict[str, int | None]] = {
    # emotions scanned, emotions whose validation stories are in the corpus, neutral texts (every
    # ``neutral_stride``-th, then the first ``neutral``), top passages kept, top passages stored
    # with per-token values (None: all)
    "quick": {"emotions": 4, "story_emotions": 8, "neutral_stride": 1, "neutral": 8, "top": 3, "tokens": 2},
    "cpu": {"emotions": None, "story_emotions": None, "neutral_stride": 4, "neutral": None, "top": 5, "tokens": 3},
    "full": {"emotions": None, "story_emotions": None, "neutral_stride": 1, "neutral": None, "top": 10, "tokens": 5},
}
SHUFFLES = 200


@dataclass
class PassageReadings:
    """Per passage: the token ids, per-token readings of every emotion and the window-mean score."""

    token_ids: list[list[int]]  # text tokens only (no BOS, no padding)
    tokens: list[Tensor]  # per passage, float16 readings of its text tokens: pos x emotion
    scores: Float[Tensor, "passage emotion"]  # window means


class TokenReadingsReducer:
    """Reducer keeping every text's per-token readings at one layer and its window-mean score.

    ``read_layers`` are the layers of the pass's ``resid`` rows (default: just ``layer``), so
    the reducer can ride on a pass that reads more layers (the validation stage's).
    """

    def __init__(
        self, vecs: EmotionVectors, n_texts: int, layer: int, calibrated: bool, read_layers: Sequence[int] = ()
    ) -> None:
        self.vecs, self.layer, self.calibrated = vecs, layer, calibrated
        self.row = list(read_layers).index(layer) if read_layers else 0
        self.token_ids: list[list[int]] = [[] for _ in range(n_texts)]
        self.tokens: list[Tensor] = [torch.zeros(0) for _ in range(n_texts)]
        self.scores = torch.zeros(n_texts, len(vecs.emotions))

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        at_layer = resid[self.row : self.row + 1]
        readings = token_readings(self.vecs, batch, at_layer, [self.layer], self.calibrated)[0]  # batch pos emotion
        weights = batch.window.to(readings.dtype)
        sums = einops.einsum(readings, weights, "batch pos emotion, batch pos -> batch emotion")
        self.scores[batch.indices] = (sums / weights.sum(dim=1, keepdim=True).clamp(min=1)).cpu()
        for row, text_index in enumerate(batch.indices):
            span = slice(batch.first_text_position, int(batch.lengths[row]))
            self.token_ids[text_index] = batch.tokens[row, span].tolist()
            self.tokens[text_index] = readings[row, span].half().cpu()

    def readings(self) -> PassageReadings:
        """What the reducer collected, per text in input order."""
        return PassageReadings(self.token_ids, self.tokens, self.scores)


def passage_readings(
    model: HookedTransformer, vecs: EmotionVectors, texts: list[str], layer: int, calibrated: bool
) -> PassageReadings:
    """One batched pass over ``texts`` at ``layer``: per-token readings and window-mean scores."""
    if not texts:
        return PassageReadings([], [], torch.zeros(0, len(vecs.emotions)))
    reducer = TokenReadingsReducer(vecs, len(texts), layer, calibrated)
    options = ReadOptions(layers=[layer], window_start=fit_window_start(vecs), progress="passages")
    reduce(model, texts, options, [reducer])
    return reducer.readings()


def joined(first: PassageReadings, second: PassageReadings) -> PassageReadings:
    """The readings of ``first``'s passages followed by ``second``'s."""
    scores = torch.cat([first.scores, second.scores])
    return PassageReadings(first.token_ids + second.token_ids, first.tokens + second.tokens, scores)


def scanned_stories(vecs: EmotionVectors, profile: str) -> list[Story]:
    """The held-out stories in the scanned corpus, in order: those of the profile's first emotions."""
    in_corpus = set(list(vecs.emotions)[: PROFILE_SIZES[profile]["story_emotions"]])
    return [s for s in load_stories(split="validation") if s.emotion in in_corpus]


def story_reducer(
    model: HookedTransformer, vecs: EmotionVectors, profile: str, texts: Sequence[str], read_layers: Sequence[int]
) -> TokenReadingsReducer | None:
    """A reducer that collects this scan's story readings during another pass over ``texts``.

    None unless ``texts`` are exactly the scan's stories, in order, and the pass reads the
    scan's layer. Give the filled reducer's ``readings()`` to :func:`run` as ``story_readings``.
    """
    chosen, calibrated = reading_setup(model, vecs, profile, None)
    if chosen not in read_layers or list(texts) != [s.text for s in scanned_stories(vecs, profile)]:
        return None
    return TokenReadingsReducer(vecs, len(texts), chosen, calibrated, read_layers)


def precision_at_k(top: np.ndarray, labels: np.ndarray, targets: list[set[int]]) -> np.ndarray:
    """Per scanned emotion (row of ``top``), the share of its top passages whose label is in its target set."""
    return np.array([np.isin(labels[row], list(target)).mean() for row, target in zip(top, targets, strict=True)])


@dataclass
class CorpusScanResult:
    layer: int
    calibrated: bool
    n_stories: int
    n_neutral: int
    top_k: int
    emotions: list[dict[str, Any]]  # per scanned emotion: cluster, top passages, precisions, stored tokens
    precision: dict[str, Any]  # exact / cluster: Estimate, chance, shuffled control
    neutral_share_of_top: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    layer: int | None = None,
    story_readings: PassageReadings | None = None,
    **kwargs: Any,
) -> CorpusScanResult:
    """Top passages of a mixed corpus per emotion, with per-token readings and precision vs chance.

    ``story_readings``: the stories' readings from a shared pass (:func:`story_reducer`);
    then only the neutral texts are read here.
    """
    chosen, calibrated = reading_setup(model, vecs, profile, layer)
    sizes = PROFILE_SIZES[profile]
    index = {e: i for i, e in enumerate(vecs.emotions)}
    stories = scanned_stories(vecs, profile)
    neutral = load_neutral()[:: sizes["neutral_stride"] or 1][: sizes["neutral"]]
    texts = [s.text for s in stories] + neutral
    labels = np.array([index[s.emotion] for s in stories] + [-1] * len(neutral))  # -1: neutral
    if story_readings is None:
        readings = passage_readings(model, vecs, texts, chosen, calibrated)
    elif len(story_readings.token_ids) != len(stories) or layer not in (None, chosen):
        raise ValueError("story_readings must come from story_reducer() for this profile and the default layer")
    else:
        readings = joined(story_readings, passage_readings(model, vecs, neutral, chosen, calibrated))
    scanned = list(vecs.emotions)[: sizes["emotions"]]
    row = vecs.layer_index(chosen)
    unit = vecs.vectors[row] / vecs.vectors[row].norm(dim=-1, keepdim=True)
    clusters = kmeans_labels(unit, seed=seed)
    top_k, n_tokens = int(sizes["top"] or 5), int(sizes["tokens"] or 3)
    columns = [index[e] for e in scanned]
    scores = readings.scores.double().numpy()
    top = np.argsort(-scores[:, columns], axis=0, kind="stable")[:top_k].T  # emotion x k
    exact = [{index[e]} for e in scanned]
    cluster = [set(np.flatnonzero(clusters == clusters[index[e]]).tolist()) for e in scanned]
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(labels) for _ in range(SHUFFLES)]
    precision: dict[str, Any] = {}
    per_emotion: dict[str, np.ndarray] = {}
    for name, targets in (("exact", exact), ("cluster", cluster)):
        values = precision_at_k(top, labels, targets)
        chance = np.array([np.isin(labels, list(t)).mean() for t in targets])
        shuffled = np.mean([precision_at_k(top, s, targets) for s in shuffles], axis=0)
        per_emotion[name] = values
        precision[name] = {
            "precision": mean_ci(values, seed=seed).to_dict(),
            "chance": round(float(chance.mean()), 4),
            "shuffled": mean_ci(shuffled, seed=seed).to_dict(),
            "above_chance": mean_ci(values - chance, seed=seed).to_dict(),
        }
    neutral_share = (labels[top] == -1).mean(axis=1)
    rows = []
    for i, emotion in enumerate(scanned):
        passages = []
        for rank, passage in enumerate(top[i]):
            entry: dict[str, Any] = {
                "passage": int(passage),
                "label": "neutral" if labels[passage] < 0 else vecs.emotions[labels[passage]],
                "score": round(float(scores[passage, columns[i]]), 4),
                "text": texts[passage],
            }
            if rank < n_tokens:
                entry["tokens"] = [model.tokenizer.decode([t]) for t in readings.token_ids[passage]]  # type: ignore[union-attr]
                values = readings.tokens[passage][:, columns[i]].float()
                entry["values"] = [round(float(v), 3) for v in values]
            passages.append(entry)
        rows.append(
            {
                "emotion": emotion,
                "cluster": [vecs.emotions[j] for j in sorted(cluster[i])],
                "precision_exact": round(float(per_emotion["exact"][i]), 4),
                "precision_cluster": round(float(per_emotion["cluster"][i]), 4),
                "top": passages,
            }
        )
    return CorpusScanResult(
        layer=chosen,
        calibrated=calibrated,
        n_stories=len(stories),
        n_neutral=len(neutral),
        top_k=top_k,
        emotions=rows,
        precision=precision,
        neutral_share_of_top=mean_ci(neutral_share, seed=seed).to_dict(),
    )


def render(page: Any, data: dict[str, Any]) -> None:
    """Precision vs chance and shuffled labels, each emotion's top passages, coloured tokens of the best."""
    from emolens.report.views import colored_tokens_multi

    page.heading(f"Corpus scan: top passages per emotion (layer {data['layer']})")
    page.paragraph(
        f"Corpus: {data['n_stories']} held-out validation stories and {data['n_neutral']} neutral texts; "
        f"readings {'calibrated' if data['calibrated'] else 'raw'}; top {data['top_k']} passages per emotion."
    )
    page.table(
        ["precision@k", "measured [95% CI over emotions]", "chance", "shuffled labels"],
        [
            [
                name,
                estimate_text(p["precision"], signed=False),
                f"{p['chance']:.3f}",
                f"{p['shuffled']['value']:.3f}",
            ]
            for name, p in data["precision"].items()
        ],
    )
    page.table(
        ["emotion", "precision exact", "precision cluster", "top passages (label: score)"],
        [
            [
                e["emotion"],
                f"{e['precision_exact']:.2f}",
                f"{e['precision_cluster']:.2f}",
                "; ".join(f"{p['label']}: {p['score']:+.2f}" for p in e["top"]),
            ]
            for e in data["emotions"]
        ],
    )
    for e in data["emotions"][:12]:
        best = e["top"][0]
        colored_tokens_multi(
            page, best["tokens"], {e["emotion"]: best["values"]}, f"{e['emotion']}: top passage ({best['label']})"
        )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page row: how often an emotion's top passages are its own."""
    p = data["precision"]["exact"]
    return [
        (
            f"corpus scan: precision@{data['top_k']} of an emotion's top passages",
            f"{estimate_text(p['precision'], 2, signed=False)} (chance {p['chance']:.3f})",
            "",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.corpus_scan --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    return experiment_main("corpus_scan", run, argv, __doc__.splitlines()[0] if __doc__ else None)
