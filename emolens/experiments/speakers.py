"""Speakers: in a two-person dialogue, does each speaker's emotion read on that speaker's own tokens?

Each packaged dialogue (``emolens/data/speakers.jsonl``: four turns by two named people, and
the emotion each of them shows) is written as a transcript (``Name: turn`` per line) and read
once at the read layer (calibrated per-token readings; the speaker labels are not counted,
only the tokens of each turn's text).

1. **Own vs other tokens**: per dialogue and speaker S with emotion e_S, the mean reading of
   e_S on S's tokens minus on the other speaker's tokens; per dialogue the mean over its two
   speakers (and per role: first / second speaker). Paired, CI over dialogues. **Control**:
   the emotion labels shuffled between dialogues (the same statistic with another
   dialogue's emotions; one-sided permutation p).
2. **Present- vs other-speaker probes** (leave one dialogue out): two ridge maps from a
   turn-group's mean residual to the unit emotion vector of (a) the *present* speaker's
   emotion and (b) the *other* speaker's emotion. Held out, the predicted vector ranks all
   fitted emotions by cosine; we report the rank of the true one (chance ``(E + 1) / 2``)
   beside the same probes trained on shuffled labels. Fitted on all dialogues, each
   probe's direction for emotion X (``W^T u_X``) gives the cosine between "the present
   speaker is X" and "the other speaker is X", and each one's cosine with X's vector
   (CI over the emotions in the data). The ridge strength is fixed in advance
   (``RIDGE_ALPHA`` times the mean squared feature norm), not tuned on these dialogues.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import data_path
from emolens.experiments.runner import experiment_main
from emolens.experiments.scenarios import reading_setup
from emolens.extract import Batch, ReadOptions, char_span_positions, reduce
from emolens.readout import token_readings
from emolens.stats import estimate_text, mean_ci, permutation_p
from emolens.vectors import EmotionVectors

PROFILE_DIALOGUES = {"quick": 8, "cpu": None, "full": None}
RIDGE_ALPHA = 1.0
SHUFFLED_PROBES = 20


@dataclass(frozen=True)
class Dialogue:
    id: str
    text: str
    speakers: tuple[str, str]  # in order of first appearance
    emotions: tuple[str, str]
    spans: tuple[list[tuple[int, int]], list[tuple[int, int]]]  # character spans of each speaker's turn texts


def load_dialogues() -> list[Dialogue]:
    out = []
    for line in data_path("speakers.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        order = list(dict.fromkeys(turn["speaker"] for turn in row["turns"]))
        if len(order) != 2:
            raise ValueError(f"dialogue {row['id']} must have exactly two speakers; fix speakers.jsonl")
        text = ""
        spans: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        for turn in row["turns"]:
            prefix = f"{turn['speaker']}: "
            start = len(text) + len(prefix)
            text += prefix + turn["text"] + "\n"
            spans[order.index(turn["speaker"])].append((start, start + len(turn["text"])))
        emotions = (row["emotions"][order[0]], row["emotions"][order[1]])
        out.append(Dialogue(row["id"], text.rstrip("\n"), (order[0], order[1]), emotions, spans))
    return out


class DialogueReadings:
    """Reducer: per text, per-token readings and the residual stream at one layer (text positions as in the model)."""

    def __init__(self, vecs: EmotionVectors, n_texts: int, layer: int, calibrated: bool) -> None:
        self.vecs, self.layer, self.calibrated = vecs, layer, calibrated
        self.readings: list[Tensor] = [torch.zeros(0)] * n_texts
        self.resid: list[Tensor] = [torch.zeros(0)] * n_texts

    def add(self, batch: Batch, resid: Float[Tensor, "layer batch pos d_model"]) -> None:
        readings = token_readings(self.vecs, batch, resid, [self.layer], self.calibrated)[0]
        for row, text_index in enumerate(batch.indices):
            length = int(batch.lengths[row])
            self.readings[text_index] = readings[row, :length].cpu()
            self.resid[text_index] = resid[0, row, :length].to("cpu", copy=True)  # resid is reused next batch


def ridge_map(
    features: Float[Tensor, "n d_model"], targets: Float[Tensor, "n d_target"], alpha: float
) -> Float[Tensor, "d_target d_model"]:
    """Ridge regression weights (dual form, features already centred): ``targets ~ features @ W.T``."""
    gram = einops.einsum(features, features, "n d, m d -> n m")
    strength = alpha * float(torch.diagonal(gram).mean())
    solved = torch.linalg.solve(gram + strength * torch.eye(len(gram), dtype=gram.dtype), targets)
    return einops.einsum(solved, features, "n t, n d -> t d")


def true_ranks(
    predictions: Float[Tensor, "n d_target"], unit: Float[Tensor, "emotion d_target"], truth: list[int]
) -> np.ndarray:
    """Rank (1 = most similar) of each row's true emotion among all by cosine with the prediction."""
    cosine = einops.einsum(predictions / predictions.norm(dim=-1, keepdim=True), unit, "n t, e t -> n e")
    own = cosine[torch.arange(len(truth)), truth]
    return (1 + (cosine > own[:, None]).sum(dim=1)).numpy().astype(float)


def probe_ranks(features: Tensor, unit: Tensor, labels: list[int], groups: np.ndarray) -> np.ndarray:
    """Leave-one-dialogue-out: rank of each held-out segment's label under a ridge probe fitted on the rest."""
    ranks = np.zeros(len(labels))
    for group in np.unique(groups):
        train, test = np.flatnonzero(groups != group), np.flatnonzero(groups == group)
        mean = features[train].mean(dim=0)
        weights = ridge_map(features[train] - mean, unit[[labels[i] for i in train]], RIDGE_ALPHA)
        predictions = einops.einsum(features[test] - mean, weights, "n d, t d -> n t")
        ranks[test] = true_ranks(predictions, unit, [labels[i] for i in test])
    return ranks


@dataclass
class SpeakersResult:
    layer: int
    calibrated: bool
    n_dialogues: int
    dialogues: list[dict[str, Any]]
    own_minus_other: dict[str, Any]  # both speakers, first speaker, second speaker: Estimate over dialogues
    shuffled_control: dict[str, Any]
    permutation_p: float
    probes: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    layer: int | None = None,
    **kwargs: Any,
) -> SpeakersResult:
    """Own-token vs other-token readings of each speaker's emotion, and present/other-speaker probes."""
    chosen, calibrated = reading_setup(model, vecs, profile, layer)
    index = {e: i for i, e in enumerate(vecs.emotions)}
    dialogues = [d for d in load_dialogues() if all(e in index for e in d.emotions)][: PROFILE_DIALOGUES[profile]]
    if len(dialogues) < 3:
        raise ValueError(
            "fewer than 3 dialogues have both speakers' emotions fitted; fit the emotions in speakers.jsonl"
        )
    reducer = DialogueReadings(vecs, len(dialogues), chosen, calibrated)
    reduce(model, [d.text for d in dialogues], ReadOptions(layers=[chosen], progress="dialogues"), [reducer])
    positions = [
        [sorted({p for a, b in spans for p in char_span_positions(model, d.text, a, b)}) for spans in d.spans]
        for d in dialogues
    ]
    # own[i, s, t]: mean reading of dialogue i's speaker-s emotion on speaker t's tokens, for every emotion pair
    segment_readings = np.stack(
        [[reducer.readings[i][pos].double().mean(dim=0).numpy() for pos in positions[i]] for i in range(len(dialogues))]
    )  # dialogue speaker emotion
    labels = np.array([[index[e] for e in d.emotions] for d in dialogues])  # dialogue speaker

    def differences(assignment: np.ndarray) -> np.ndarray:
        """dialogue x speaker: reading of (assigned) speaker emotion on own minus other speaker's tokens."""
        emotion = labels[assignment]
        rows = np.arange(len(dialogues))
        own = np.stack([segment_readings[rows, s, emotion[:, s]] for s in range(2)], axis=1)
        other = np.stack([segment_readings[rows, 1 - s, emotion[:, s]] for s in range(2)], axis=1)
        return own - other

    true = differences(np.arange(len(dialogues)))
    rng = np.random.default_rng(seed)
    shuffled = np.array([differences(rng.permutation(len(dialogues))).mean(axis=1) for _ in range(200)])
    features = torch.stack(
        [reducer.resid[i][pos].double().mean(dim=0) for i in range(len(dialogues)) for pos in positions[i]]
    )  # segment d_model
    probes = speaker_probes(vecs, chosen, features, labels, seed)
    return SpeakersResult(
        layer=chosen,
        calibrated=calibrated,
        n_dialogues=len(dialogues),
        dialogues=[
            {
                "id": d.id,
                "speakers": list(d.speakers),
                "emotions": list(d.emotions),
                "own_minus_other": np.round(true[i], 4).tolist(),
            }
            for i, d in enumerate(dialogues)
        ],
        own_minus_other={
            "both": mean_ci(true.mean(axis=1), seed=seed).to_dict(),
            "first_speaker": mean_ci(true[:, 0], seed=seed).to_dict(),
            "second_speaker": mean_ci(true[:, 1], seed=seed).to_dict(),
            "share_positive": mean_ci((true > 0).mean(axis=1), seed=seed).to_dict(),
        },
        shuffled_control=mean_ci(shuffled.mean(axis=0), seed=seed).to_dict(),
        permutation_p=permutation_p(lambda perm: float(differences(perm).mean()), len(dialogues), seed=seed),
        probes=probes,
    )


def speaker_probes(
    vecs: EmotionVectors, layer: int, features: Float[Tensor, "segment d_model"], labels: np.ndarray, seed: int
) -> dict[str, Any]:
    """Leave-one-dialogue-out present/other-speaker probes, their held-out ranks and their directions' cosines."""
    row = vecs.layer_index(layer)
    unit = (vecs.vectors[row] / vecs.vectors[row].norm(dim=-1, keepdim=True)).double()
    groups = np.repeat(np.arange(len(labels)), 2)
    present = labels.reshape(-1).tolist()
    other = labels[:, ::-1].reshape(-1).tolist()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"chance_rank": (len(vecs.emotions) + 1) / 2, "ridge_alpha": RIDGE_ALPHA}
    for name, truth in (("present", present), ("other", other)):
        ranks = probe_ranks(features, unit, truth, groups)
        shuffled = []
        for _ in range(SHUFFLED_PROBES):
            order = rng.permutation(len(labels))  # shuffle whole dialogues' labels
            permuted = [truth[2 * order[i // 2] + i % 2] for i in range(len(truth))]
            shuffled.append(probe_ranks(features, unit, permuted, groups).mean())
        out[name] = {
            "held_out_rank": mean_ci(ranks.reshape(-1, 2).mean(axis=1), seed=seed).to_dict(),
            "shuffled_rank": float(np.mean(shuffled)),
        }
    centred = features - features.mean(dim=0)
    weights = {
        name: ridge_map(centred, unit[truth], RIDGE_ALPHA) for name, truth in (("present", present), ("other", other))
    }
    seen = sorted(set(present))
    directions = {name: einops.einsum(unit[seen], w, "e t, t d -> e d") for name, w in weights.items()}
    unit_dirs = {name: d / d.norm(dim=-1, keepdim=True) for name, d in directions.items()}
    out["cosine_present_other"] = mean_ci(
        einops.einsum(unit_dirs["present"], unit_dirs["other"], "e d, e d -> e").numpy(), seed=seed
    ).to_dict()
    for name in ("present", "other"):
        out[f"cosine_{name}_vector"] = mean_ci(
            einops.einsum(unit_dirs[name], unit[seen], "e d, e d -> e").numpy(), seed=seed
        ).to_dict()
    return out


def render(page: Any, data: dict[str, Any]) -> None:
    """Own-vs-other table beside the shuffled control, per-dialogue bars, probe summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page.heading(f"Speakers: each speaker's emotion on own vs other tokens (layer {data['layer']})")
    own = data["own_minus_other"]
    control = data["shuffled_control"]

    page.table(
        ["measure", "value [95% CI over dialogues]"],
        [
            ["own minus other tokens, both speakers", estimate_text(own["both"])],
            ["first speaker", estimate_text(own["first_speaker"])],
            ["second speaker", estimate_text(own["second_speaker"])],
            ["share of speakers with own > other", estimate_text(own["share_positive"])],
            ["shuffled labels (control)", estimate_text(control)],
            ["permutation p", f"{data['permutation_p']:.4f}"],
        ],
    )
    figure, axis = plt.subplots(figsize=(8, 3))
    values = [d["own_minus_other"] for d in data["dialogues"]]
    x = np.arange(len(values))
    axis.bar(x - 0.2, [v[0] for v in values], 0.4, label="first speaker")
    axis.bar(x + 0.2, [v[1] for v in values], 0.4, label="second speaker")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(x, [d["id"] for d in data["dialogues"]], rotation=90, fontsize=6)
    axis.set_ylabel("own - other reading")
    axis.legend(fontsize=7)
    page.figure(figure, "Per dialogue: each speaker's emotion on own minus other speaker's tokens")
    plt.close(figure)
    probes = data["probes"]
    page.table(
        ["probe", "held-out rank of the true emotion", "shuffled labels", "chance"],
        [
            [name, estimate_text(probes[name]["held_out_rank"]), f"{probes[name]['shuffled_rank']:.1f}",
             f"{probes['chance_rank']:.1f}"]
            for name in ("present", "other")
        ],
    )  # fmt: skip
    page.paragraph(
        f"Cosine of 'present speaker is X' and 'other speaker is X' probe directions: "
        f"{estimate_text(probes['cosine_present_other'])}; with X's emotion vector: present "
        f"{estimate_text(probes['cosine_present_vector'])}, other {estimate_text(probes['cosine_other_vector'])}."
    )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page row: own-minus-other reading of each speaker's emotion."""
    both = data["own_minus_other"]["both"]
    return [
        (
            "speakers: each speaker's emotion on own minus other speaker's tokens",
            f"{estimate_text(both)} (shuffled {data['shuffled_control']['value']:+.3f})",
            "",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.speakers --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    return experiment_main("speakers", run, argv, __doc__.splitlines()[0] if __doc__ else None)
