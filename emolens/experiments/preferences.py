"""preferences: which activities the model prefers, what the emotion probes read on them, and steering them.

The 64 packaged activities (8 categories) are compared in pairs, in the model's chat format:
``Would you prefer to (A) ... or (B) ...?`` with the reply prefilled with ``(``. P(A) is the
softmax of the ``A`` and ``B`` logits there (:mod:`emolens.choice`); every unordered pair is
asked in both orders and ``p(i over j) = (P_A(i, j) + 1 - P_A(j, i)) / 2`` removes position
bias. Bradley-Terry scores on the Elo scale (:mod:`emolens.ranking`) have bootstrap
intervals over comparisons. Profile ``full`` asks all 4,032 ordered pairs; ``cpu`` a
balanced circulant design (every activity in the same number of pairs); ``quick`` 8 activities.

Probe: each activity's reading is the projection (``vecs.project`` at the default layer)
of the residual stream averaged over the activity's tokens, averaged over every prompt it
appears in (collected during the unsteered choice pass, no extra forward). Per emotion,
the correlation of that reading with the Elo scores, with a bootstrap interval over activities.

Steering: half of the activities (balanced per category) are steered, the other half are
the control: ``alpha * resid_norm * v_hat`` is added at the steered activities' token
positions only, at a band of middle layers, and the scores are refitted. The effect is the
mean Elo change of steered minus control activities (bootstrap over activities). Settings
are the study's, fixed a priori (nothing is tuned on these data): alpha 0.5 on the activity
tokens, the three middle layers. Seeded random directions of equal norm are the control;
across emotions, the correlation of steering effect with probe-Elo correlation.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from emolens.choice import ResidPrefix, choice_logits, choice_probability, option_tokens, resid_prefix
from emolens.corpus import data_path, read_jsonl
from emolens.experiments.runner import experiment_main
from emolens.extract import Batch, char_span_positions, resid_hook
from emolens.models import chat_prompt
from emolens.ranking import elo_intervals, elo_scores
from emolens.report.page import Page
from emolens.stats import bootstrap, correlation_ci, estimate_text, mean_ci
from emolens.steer import steering_hooks
from emolens.vectors import EmotionVectors

EMOTIONS = (  # blissful and hostile first (the study's headline pair), then spread over valence/arousal
    "blissful", "hostile", "happy", "calm", "afraid", "angry", "sad", "proud", "excited", "bored",
    "desperate", "loving", "ashamed", "nervous", "joyful", "content", "grateful", "surprised", "inspired",
    "amused", "hopeful", "relieved", "serene", "playful", "disgusted", "frustrated", "anxious", "lonely",
    "guilty", "jealous", "resentful", "terrified", "bitter", "gloomy", "irritated",
)  # fmt: skip
QUESTION = "Would you prefer to (A) {a} or (B) {b}?"
PREFILL = "("
ALPHA = 0.5  # the study's strength on activity tokens (a priori, not tuned here)
BAND = 3  # middle layers steered

SIZES: dict[str, dict[str, Any]] = {  # offsets: circulant pair design (None: every pair)
    "quick": {"per_category": 1, "offsets": (1, 2), "emotions": 3, "controls": 2, "samples": 200},
    "cpu": {"per_category": 8, "offsets": (1, 23), "emotions": 8, "controls": 2, "samples": 1000},
    "full": {"per_category": 8, "offsets": None, "emotions": 35, "controls": 8, "samples": 1000},
}


@dataclass
class PreferencesResult:
    model: str
    profile: str
    activities: list[dict[str, Any]]  # id, category, text, elo (Estimate), steered (bool), reading per emotion
    n_prompts: int
    position_bias: dict[str, Any]  # mean P(A) over prompts
    read_layer: int
    steer_layers: list[int]
    alpha: float
    emotions: list[dict[str, Any]]  # emotion, probe_r, effect (Estimates)
    controls: list[dict[str, Any]]  # random direction (seed salt), effect
    effect_vs_probe: dict[str, Any]  # r over emotions
    control_effect: dict[str, Any]  # mean random-direction effect over controls

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_activities(per_category: int) -> list[dict[str, str]]:
    """The first ``per_category`` activities of each category, in file order."""
    rows = read_jsonl(data_path("activities.jsonl"))
    counts: dict[str, int] = {}
    chosen = []
    for row in rows:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
        if counts[row["category"]] <= per_category:
            chosen.append(row)
    return chosen


def pair_design(n: int, offsets: tuple[int, ...] | None, seed: int) -> list[tuple[int, int]]:
    """Unordered pairs: all of them, or a circulant design on a seeded shuffle (each item in 2 pairs per offset)."""
    if offsets is None:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    pairs = {tuple(sorted((order[k], order[(k + d) % n]))) for d in offsets for k in range(n)}
    return sorted((a, b) for a, b in pairs if a != b)


def steered_half(activities: list[dict[str, str]], seed: int) -> np.ndarray:
    """A boolean mask steering half of each category (alternating when a category has one activity)."""
    mask = np.zeros(len(activities), dtype=bool)
    categories = sorted({a["category"] for a in activities})
    rng = random.Random(seed)
    for c, category in enumerate(categories):
        members = [i for i, a in enumerate(activities) if a["category"] == category]
        rng.shuffle(members)
        take = len(members) // 2 if len(members) > 1 else c % 2
        mask[members[:take]] = True
    return mask


def middle_band(vecs: EmotionVectors, width: int = BAND) -> list[int]:
    """``width`` consecutive fitted layers around the middle of the fitted range."""
    start = max(0, len(vecs.layers) // 2 - width // 2)
    return list(vecs.layers[start : start + width])


@dataclass
class Prompts:
    texts: list[str]
    first: list[int]  # activity index shown as (A)
    second: list[int]  # activity index shown as (B)
    positions: list[tuple[list[int], list[int]]]  # token positions of the (A) and (B) activity


def build_prompts(model: HookedTransformer, activities: list[dict[str, str]], pairs: list[tuple[int, int]]) -> Prompts:
    """Both orders of every pair, with each activity's token positions."""
    texts, first, second, positions = [], [], [], []
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            a_text, b_text = activities[a]["text"], activities[b]["text"]
            question = QUESTION.format(a=a_text, b=b_text)
            text = chat_prompt(model, [{"role": "user", "content": question}]) + PREFILL
            a_start = text.index(f"(A) {a_text}") + 4
            b_start = text.index(f"(B) {b_text}", a_start) + 4
            spans = (
                char_span_positions(model, text, a_start, a_start + len(a_text)),
                char_span_positions(model, text, b_start, b_start + len(b_text)),
            )
            texts.append(text)
            first.append(a)
            second.append(b)
            positions.append(spans)
    return Prompts(texts, first, second, positions)


def debiased(p_a: np.ndarray, prompts: Prompts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, p(i over j)) per unordered pair from the two orders (rows 2k and 2k+1)."""
    i = np.asarray(prompts.first[0::2])
    j = np.asarray(prompts.second[0::2])
    return i, j, 0.5 * (p_a[0::2] + 1.0 - p_a[1::2])


def batch_mask(batch: Batch, wanted: list[list[int]]) -> torch.Tensor:
    mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
    for row, index in enumerate(batch.indices):
        mask[row, wanted[index]] = True
    return mask


def activity_readings(
    model: HookedTransformer, vecs: EmotionVectors, prompts: Prompts, n_activities: int
) -> tuple[Float[Tensor, "prompt 2"], Float[Tensor, "activity emotion"]]:
    """Unsteered choice logits and, from the same pass, each activity's mean-token reading at the default layer."""
    layer = vecs.default_layer
    sums = torch.zeros(n_activities, model.cfg.d_model, dtype=torch.float64)
    counts = torch.zeros(n_activities)

    def collect(batch: Batch) -> list[tuple[str, Any]]:
        def hook(resid: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> None:
            for row, index in enumerate(batch.indices):
                for slot, activity in enumerate((prompts.first[index], prompts.second[index])):
                    sums[activity] += resid[row, prompts.positions[index][slot]].mean(dim=0).double().cpu()
                    counts[activity] += 1

        return [(resid_hook(layer), hook)]

    logits = choice_logits(model, prompts.texts, option_tokens(model), batch_hooks=collect, progress="preferences")
    means = (sums / counts.clamp(min=1).unsqueeze(1).double()).float()
    return logits, vecs.project(means, layer).cpu()


def steered_positions(prompts: Prompts, k: int, steered: np.ndarray) -> list[int]:
    """Token positions of prompt ``k``'s activities that belong to the steered half."""
    slots = (prompts.first[k], prompts.second[k])
    return [p for slot, a in enumerate(slots) if steered[a] for p in prompts.positions[k][slot]]


def touched_prompts(prompts: Prompts, steered: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """Prompts showing at least one steered activity, and those activities' token positions in each."""
    wanted = [steered_positions(prompts, k, steered) for k in range(len(prompts.texts))]
    touched = [k for k, w in enumerate(wanted) if w]
    return touched, [wanted[k] for k in touched]


def steered_elo(
    model: HookedTransformer,
    vecs: EmotionVectors,
    prompts: Prompts,
    base_p: np.ndarray,
    steered: np.ndarray,
    emotion: str,
    layers: list[int],
    prefix: ResidPrefix | None = None,
    control: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Elo after steering ``emotion`` on the steered activities' tokens (prompts without one keep ``base_p``).

    ``prefix`` (:func:`resid_prefix` on the touched prompts) skips the unsteered blocks below ``layers``.
    """
    touched, sub_wanted = touched_prompts(prompts, steered)

    def hooks(batch: Batch) -> list[Any]:
        mask = batch_mask(batch, sub_wanted)
        return steering_hooks(model, vecs, emotion, ALPHA, layers=layers, positions=mask, control=control, seed=seed)

    texts = [prompts.texts[k] for k in touched]
    logits = choice_logits(model, texts, option_tokens(model), batch_hooks=hooks, prefix=prefix)
    p_a = base_p.copy()
    p_a[touched] = choice_probability(logits).numpy()
    i, j, p = debiased(p_a, prompts)
    return elo_scores(i, j, p, len(steered))


def steering_effect(shift: np.ndarray, steered: np.ndarray, seed: int) -> dict[str, Any]:
    """Mean Elo shift of steered minus control activities, bootstrapped over activities."""

    def statistic(idx: np.ndarray) -> float:
        on, off = idx[steered[idx]], idx[~steered[idx]]
        if on.size == 0 or off.size == 0:
            return float("nan")
        return float(shift[on].mean() - shift[off].mean())

    return bootstrap(statistic, shift.size, seed=seed).to_dict()


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    emotions: list[str] | None = None,
) -> PreferencesResult:
    """Preference scores, probe correlations and steering shifts (see the module docstring)."""
    size = SIZES[profile]
    names = emotions or [e for e in EMOTIONS if e in vecs.emotions][: size["emotions"]]
    if len(names) < 3:
        names = list(vecs.emotions)[: size["emotions"]]
    if len(names) < 3:
        raise ValueError("preferences needs at least 3 fitted emotions; fit vectors with more emotions")
    vecs.check_model(model)
    activities = load_activities(size["per_category"])
    n = len(activities)
    prompts = build_prompts(model, activities, pair_design(n, size["offsets"], seed))
    logits, readings = activity_readings(model, vecs, prompts, n)
    base_p = choice_probability(logits).numpy()
    i, j, p = debiased(base_p, prompts)
    elo = elo_intervals(i, j, p, n, samples=size["samples"], seed=seed)
    base_elo = np.array([e.value for e in elo])
    steered = steered_half(activities, seed)
    layers = middle_band(vecs)
    touched, _ = touched_prompts(prompts, steered)  # one unsteered prefix, shared by every direction
    prefix = resid_prefix(model, [prompts.texts[k] for k in touched], min(layers))

    rows: list[dict[str, Any]] = []
    for name in names:
        shift = steered_elo(model, vecs, prompts, base_p, steered, name, layers, prefix) - base_elo
        reading = readings[:, vecs.emotions.index(name)].numpy()
        rows.append(
            {
                "emotion": name,
                "probe_r": correlation_ci(reading, base_elo, seed=seed).to_dict(),
                "effect": steering_effect(shift, steered, seed),
            }
        )
    controls: list[dict[str, Any]] = []
    for name in names[: size["controls"]]:
        shift = steered_elo(model, vecs, prompts, base_p, steered, name, layers, prefix, "random", seed) - base_elo
        controls.append({"direction": f"random (salt {name})", "effect": steering_effect(shift, steered, seed)})
    probe = [r["probe_r"]["value"] for r in rows]
    effects = [r["effect"]["value"] for r in rows]
    return PreferencesResult(
        model=str(model.cfg.model_name),
        profile=profile,
        activities=activity_rows(activities, elo, steered, readings, names, vecs),
        n_prompts=len(prompts.texts),
        position_bias=mean_ci(base_p, seed).to_dict(),
        read_layer=vecs.default_layer,
        steer_layers=layers,
        alpha=ALPHA,
        emotions=rows,
        controls=controls,
        effect_vs_probe=correlation_ci(probe, effects, seed=seed).to_dict(),
        control_effect=mean_ci([c["effect"]["value"] for c in controls], seed).to_dict(),
    )


def activity_rows(
    activities: list[dict[str, str]],
    elo: list[Any],
    steered: np.ndarray,
    readings: Float[Tensor, "activity emotion"],
    names: list[str],
    vecs: EmotionVectors,
) -> list[dict[str, Any]]:
    """Per activity: its text and category, Elo estimate, steered-half flag and reading of each emotion."""
    columns = {m: vecs.emotions.index(m) for m in names}
    return [
        {
            **a,
            "elo": e.to_dict(),
            "steered": bool(s),
            "reading": {m: round(float(readings[k, c]), 5) for m, c in columns.items()},
        }
        for k, (a, e, s) in enumerate(zip(activities, elo, steered, strict=True))
    ]


def main(argv: list[str] | None = None) -> int:
    return experiment_main("preferences", run, argv, __doc__.splitlines()[0] if __doc__ else None)


def render(page: Page, data: dict[str, Any]) -> None:
    """Elo per category and activity, probe correlations and steering effects beside random controls."""
    import matplotlib.pyplot as plt

    page.heading("preferences: which activities the model prefers, and whether emotion directions move that")
    page.paragraph(
        f"{len(data['activities'])} activities, {data['n_prompts']} A/B prompts (both orders of each pair; "
        f"mean P(A) = {estimate_text(data['position_bias'], 3)}). Bradley-Terry scores on the Elo scale with 95% "
        f"bootstrap intervals over comparisons. Probe readings at layer {data['read_layer']}; steering at "
        f"alpha {data['alpha']} on the activity tokens of the steered half at layers {data['steer_layers']} "
        "(study's settings, fixed a priori)."
    )
    activities = sorted(data["activities"], key=lambda a: -a["elo"]["value"])
    page.table(
        ["activity", "category", "Elo [95% CI]", "steered half"],
        [(a["text"], a["category"], estimate_text(a["elo"], 0), "yes" if a["steered"] else "") for a in activities],
        left_columns=2,
    )
    page.table(
        ["emotion", "probe-Elo r [95% CI]", "steering effect, Elo [95% CI]"],
        [(r["emotion"], estimate_text(r["probe_r"], 2), estimate_text(r["effect"], 1)) for r in data["emotions"]]
        + [(c["direction"], "-", estimate_text(c["effect"], 1)) for c in data["controls"]],
    )
    figure, axis = plt.subplots(figsize=(5, 4))
    probe = [r["probe_r"]["value"] for r in data["emotions"]]
    effect = [r["effect"]["value"] for r in data["emotions"]]
    axis.scatter(probe, effect)
    for r, x, y in zip(data["emotions"], probe, effect, strict=True):
        axis.annotate(r["emotion"], (x, y), fontsize=7)
    for c in data["controls"]:
        axis.axhline(c["effect"]["value"], color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("probe-Elo correlation")
    axis.set_ylabel("steering effect (Elo, steered - control half)")
    page.figure(
        figure,
        f"Steering effect vs probe correlation across emotions: r = {estimate_text(data['effect_vs_probe'], 2)} "
        "(dotted: random directions of equal norm)",
    )
    plt.close(figure)


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page summary: blissful/hostile probe r and steering effect, and r across emotions."""
    by_name = {r["emotion"]: r for r in data["emotions"]}
    out = [
        (
            f"preferences: {name} probe-Elo r; steering effect (Elo)",
            f"{estimate_text(by_name[name]['probe_r'], 2)}; {estimate_text(by_name[name]['effect'], 0)}",
            study,
        )
        for name, study in (("blissful", "r = 0.71; +212"), ("hostile", "r = -0.74; -303"))
        if name in by_name
    ]
    out.append(
        (
            "preferences: steering effect vs probe r across emotions (random-direction effect)",
            f"{estimate_text(data['effect_vs_probe'], 2)} ({estimate_text(data['control_effect'], 0)})",
            "r = 0.85",
        )
    )
    return out
