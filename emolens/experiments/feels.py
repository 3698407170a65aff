"""feels: does steering an emotion direction make the model say it feels that emotion, and at which layers?

Prompts are neutral sentences that end where a feeling word would come ("... and felt").
For up to 12 emotions spread over the valence/arousal plane (cpu profile: 8), each
direction is added at each layer (all prompt positions) at each strength ``alpha`` (units
of the layer's mean residual norm), and the log-probability of each steered emotion's
word (``" word"``'s first token) is read at the last position.

Per layer and alpha, the *diagonal dominance* of the steered x measured matrix of
log-probability changes is ``mean_e [d(e, e) - mean_{w != e} d(e, w)]``. The same
statistic with seeded random directions of equal norm in place of each emotion's is the
control. Intervals resample both independent units, the steered emotions (or random
directions) and the prompts, so a control drawn from few directions gets the wide
interval it deserves. The alpha of each layer's
headline, and the best layer, are chosen on the ``select`` prompts by effect minus
control (``select_effect``) and reported on the ``report`` prompts. Effect minus control
is paired: each emotion that has a random stand-in (``controls``, the first of the
emotions) against that stand-in, on the same words and prompts, since a push of any
direction moves some words more than others.
Coherence: KL(unsteered || steered) of the next token on neutral text; an alpha is
*usable* while that KL stays below ``KL_LIMIT`` nats for both signs. Greedy
continuations at the chosen layer show what the steering does to text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from emolens.corpus import data_path, load_neutral, read_jsonl
from emolens.experiments.runner import evenly_spaced, experiment_main
from emolens.extract import resid_hook
from emolens.report.formact import estimate_errorbar
from emolens.report.page import Page
from emolens.report.views import side_by_side
from emolens.stats import crossed_mean_ci, estimate_text
from emolens.steer import steering_vector
from emolens.sweep import sweep
from emolens.vectors import EmotionVectors

EMOTIONS = (  # any first 4 or 8 still cover the four quadrants of the valence/arousal plane
    *("happy", "calm", "sad", "angry"),
    *("excited", "bored", "afraid", "proud"),
    *("loving", "surprised", "ashamed", "nervous"),
)
KL_LIMIT = 1.0  # nats, mean over neutral snippets: beyond this the model's next-token behaviour has broken
COHERENCE_EMOTIONS = 3
KL_FLOOR = 1e-4  # nats: the KL plot's log axis starts here

SIZES: dict[str, dict[str, Any]] = {  # layers: evenly spaced count (None: every layer); prompts: per split
    "quick": {
        "emotions": 3,
        "controls": 2,
        "layers": 2,
        "alphas": (0.5, 2.0),
        "prompts": 3,
        "neutral": 3,
        "new_tokens": 6,
    },
    "cpu": {  # sized for make demo in 20 minutes on 2 cores (docs/results.md); alphas 1.0 and 0.5 dropped:
        # 1.0 broke the text of both models at every layer, 0.5 gemma-3-270m's (neutral KL > 1 nat)
        "emotions": 8,
        "controls": 2,
        "layers": 4,
        "alphas": (0.05, 0.1, 0.25),
        "prompts": 6,
        "neutral": 4,
        "new_tokens": 24,
    },
    "full": {
        "emotions": 12,
        "controls": 12,
        "layers": None,
        "alphas": (0.05, 0.1, 0.25, 0.5, 1.0),
        "prompts": 12,
        "neutral": 16,
        "new_tokens": 32,
    },
}


@dataclass
class FeelsResult:
    model: str
    profile: str
    emotions: list[str]
    alphas: list[float]
    kl_limit: float
    per_layer: list[dict[str, Any]]  # layer, alpha, effect, control, difference, usable_alpha, neutral_kl
    grid: list[dict[str, Any]]  # every (layer, alpha): effect/control on the report prompts, feel-prompt KL
    best_layer: int
    matrix: list[list[float]]  # steered x measured mean log-prob change at best layer and its alpha
    generations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feel_prompts(n_per_split: int) -> tuple[list[str], list[str]]:
    """(select, report) prompts from the packaged set."""
    rows = read_jsonl(data_path("feels_prompts.jsonl"))
    select = [r["text"] for r in rows if r["split"] == "select"][:n_per_split]
    report = [r["text"] for r in rows if r["split"] == "report"][:n_per_split]
    return select, report


def dominance_by_emotion(
    rows: list[dict[str, Any]], base: dict[str, np.ndarray], emotions: list[str]
) -> Float[np.ndarray, "steered prompt"]:
    """Per steered row (an emotion, or a random direction in its place; in the order of ``emotions``)
    and prompt: the own word's log-prob change minus the mean change of the other words."""
    order = {name: i for i, name in enumerate(emotions)}
    per_emotion = []
    for row in sorted(rows, key=lambda r: order[r["emotion"]]):
        own = np.asarray(row["target_logprob_by_prompt"][row["emotion"]]) - base[row["emotion"]]
        others = [np.asarray(row["target_logprob_by_prompt"][w]) - base[w] for w in emotions if w != row["emotion"]]
        per_emotion.append(own - np.mean(others, axis=0))
    return np.stack(per_emotion)


def change_matrix(rows: list[dict[str, Any]], base: dict[str, np.ndarray], emotions: list[str]) -> list[list[float]]:
    by_emotion = {row["emotion"]: row for row in rows}
    return [
        [round(float(np.mean(np.asarray(by_emotion[e]["target_logprob_by_prompt"][w]) - base[w])), 4) for w in emotions]
        for e in emotions
    ]


def choose_alpha(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One layer's headline: among the coherent positive alphas (neutral KL <= ``KL_LIMIT``), the one with
    the largest effect minus control on the select prompts; when none is coherent, the smallest, flagged."""
    positive = [c for c in cells if c["alpha"] > 0]
    usable = [c for c in positive if c["neutral_kl"] <= KL_LIMIT]
    chosen = max(usable, key=lambda c: c["select_effect"]) if usable else min(positive, key=lambda c: c["alpha"])
    incoherent = [abs(c["alpha"]) for c in cells if c["neutral_kl"] > KL_LIMIT]
    keys = ("layer", "alpha", "select_effect", "effect", "control", "difference", "neutral_kl")
    return {
        **{k: chosen[k] for k in keys},
        "usable": bool(usable),
        "first_incoherent_alpha": min(incoherent, default=None),
    }


def run(
    model: HookedTransformer,
    vecs: EmotionVectors,
    profile: str = "cpu",
    seed: int = 0,
    emotions: list[str] | None = None,
    workdir: Path | None = None,
) -> FeelsResult:
    """The feels grid on ``vecs`` (see the module docstring); ``emotions`` overrides the profile's set.

    With ``workdir`` the sweeps are kept (resumable) in ``workdir/sweeps/feels-*.jsonl``.
    """

    def kept(name: str) -> Path | None:
        return None if workdir is None else workdir / "sweeps" / f"feels-{name}.jsonl"

    size = SIZES[profile]
    names = emotions or [e for e in EMOTIONS if e in vecs.emotions][: size["emotions"]]
    if len(names) < 2:
        raise ValueError("feels needs at least 2 fitted emotions; fit vectors with more emotions")
    layers = evenly_spaced(vecs.layers, size["layers"])
    signed = sorted({*size["alphas"], *(-a for a in size["alphas"])})
    select, report = feel_prompts(size["prompts"])
    prompts = select + report
    common: dict[str, Any] = {
        "prompts": prompts,
        "emotions": names,
        "layers": layers,
        "alphas": signed,
        "targets": names,
    }
    steered = sweep(model, vecs, out=kept("steered"), **common)
    controls = {**common, "emotions": names[: size["controls"]]}
    control = sweep(model, vecs, control="random", seed=seed, out=kept("random"), **controls)
    (baseline,) = sweep(model, vecs, prompts, names[:1], layers[:1], [0.0], targets=names, progress=False)
    base = {w: np.asarray(baseline["target_logprob_by_prompt"][w]) for w in names}
    n_select = len(select)

    neutral = [text[:300] for text in load_neutral()[: size["neutral"]]]
    coherence_names = names[:COHERENCE_EMOTIONS]
    neutral_rows = sweep(model, vecs, neutral, coherence_names, layers, signed, targets=(), out=kept("coherence"))
    grid = []
    for layer in layers:
        for alpha in signed:

            def pick(rows: list[dict[str, Any]], layer: int = layer, alpha: float = alpha) -> list[dict[str, Any]]:
                return [r for r in rows if r["layer"] == layer and r["alpha"] == alpha]

            effect = dominance_by_emotion(pick(steered), base, names)
            null = dominance_by_emotion(pick(control), base, names)
            paired = effect[: len(null)] - null  # each control emotion's direction minus its random stand-in
            neutral_kl = float(np.mean([r["kl"] for r in pick(neutral_rows)]))
            cell = {
                "layer": layer,
                "alpha": alpha,
                "select_effect": float(paired[:, :n_select].mean()),
                "effect": crossed_mean_ci(effect[:, n_select:], seed).to_dict(),
                "control": crossed_mean_ci(null[:, n_select:], seed).to_dict(),
                "difference": crossed_mean_ci(paired[:, n_select:], seed).to_dict(),
                "feel_kl": float(np.mean([r["kl"] for r in pick(steered)])),
                "neutral_kl": neutral_kl,
            }
            grid.append(cell)
    per_layer = [choose_alpha([c for c in grid if c["layer"] == layer]) for layer in layers]
    best = max(per_layer, key=lambda row: (row["usable"], row["select_effect"]))
    best_rows = [r for r in steered if r["layer"] == best["layer"] and r["alpha"] == best["alpha"]]
    report_base = {w: v[n_select:] for w, v in base.items()}
    report_rows = [
        {**r, "target_logprob_by_prompt": {w: v[n_select:] for w, v in r["target_logprob_by_prompt"].items()}}
        for r in best_rows
    ]
    return FeelsResult(
        model=str(model.cfg.model_name),
        profile=profile,
        emotions=names,
        alphas=signed,
        kl_limit=KL_LIMIT,
        per_layer=per_layer,
        grid=grid,
        best_layer=int(best["layer"]),
        matrix=change_matrix(report_rows, report_base, names),
        generations=continuations(
            model, vecs, report[:2], names[:3], int(best["layer"]), best["alpha"], size["new_tokens"]
        ),
    )


def continuations(
    model: HookedTransformer,
    vecs: EmotionVectors,
    prompts: list[str],
    emotions: list[str],
    layer: int,
    alpha: float,
    n: int,
) -> list[dict[str, Any]]:
    """Greedy continuations, unsteered and steered at ``+-alpha``, with the unsteered model's mean log-prob of each."""
    variants = [(emotion, sign * alpha) for emotion in emotions for sign in (1.0, -1.0)]
    unit = vecs.resid_norm(layer)
    deltas = torch.stack(
        [torch.zeros(model.cfg.d_model), *(a * unit * steering_vector(vecs, e, layer) for e, a in variants)]
    )
    out = []
    for prompt in prompts:
        tokens = model.to_tokens(prompt)
        plain, *steered = generate(model, tokens, n, deltas, layer)
        for (emotion, signed), text in zip(variants, steered, strict=True):
            out.append(
                {"prompt": prompt, "emotion": emotion, "alpha": signed, "layer": layer,
                 "unsteered": plain, "steered": text, "steered_logprob": plausibility(model, tokens, text)}
            )  # fmt: skip
    return out


def generate(
    model: HookedTransformer,
    tokens: Int[Tensor, "1 pos"],
    n: int,
    deltas: Float[Tensor, "variant d_model"],
    layer: int,
) -> list[str]:
    """Greedy continuation texts (without the prompt), one per row of ``deltas``, each added to the
    residual stream at ``layer`` on every position (as ``steer(..., positions="all")``).

    The variants run as one batch: each decoding step then reads the unembedding once for all
    of them, which is most of a step's cost on a large vocabulary.
    """

    def add(resid: Float[Tensor, "variant pos d_model"], hook: HookPoint) -> Float[Tensor, "variant pos d_model"]:
        return resid + einops.rearrange(deltas.to(resid.device, resid.dtype), "variant d -> variant 1 d")

    batch = einops.repeat(tokens, "1 pos -> variant pos", variant=deltas.shape[0])
    with torch.inference_mode(), model.hooks(fwd_hooks=[(resid_hook(layer), add)]):
        output = model.generate(batch, max_new_tokens=n, do_sample=False, verbose=False)
    assert model.tokenizer is not None and isinstance(output, torch.Tensor)
    return [str(model.tokenizer.decode(row[tokens.shape[1] :], skip_special_tokens=True)) for row in output]


def plausibility(model: HookedTransformer, prompt_tokens: torch.Tensor, continuation: str) -> float:
    """Mean log-prob per token of ``continuation`` under the unsteered model (fluency proxy)."""
    assert model.tokenizer is not None
    ids = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ids:
        return 0.0
    full = torch.cat([prompt_tokens[0].cpu(), torch.tensor(ids)]).unsqueeze(0).to(prompt_tokens.device)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(full)[0, :-1].float(), dim=-1)
    start = prompt_tokens.shape[1] - 1
    picked = logprobs[start:].gather(1, full[0, start + 1 :].unsqueeze(1))
    return round(float(picked.mean()), 4)


def main(argv: list[str] | None = None) -> int:
    return experiment_main("feels", run, argv, __doc__.splitlines()[0] if __doc__ else None)


def render(page: Page, data: dict[str, Any]) -> None:
    """Per-layer effect beside its control, the KL of each strength, the matrix and generations."""
    import matplotlib.pyplot as plt

    page.heading("feels: steering an emotion direction, then asking how the text feels")
    page.paragraph(
        f"{len(data['emotions'])} emotions steered at layers {[r['layer'] for r in data['per_layer']]} "
        f"with alpha in {data['alphas']} "
        "(units of mean residual norm, all prompt positions); effect = diagonal dominance of the "
        "steered x measured log-prob change on held-out prompts, beside "
        f"{data['per_layer'][0]['control']['n']} seeded random directions of equal norm; bootstrap 95% CIs "
        "resample the steered emotions (or random directions) and the prompts. "
        f"Usable: neutral-text KL <= {data['kl_limit']} nats."
    )
    rows = data["per_layer"]
    layers = [r["layer"] for r in rows]
    figure, axis = plt.subplots(figsize=(7, 3))
    for key, label, style in (("effect", "emotion direction", "o-"), ("control", "random direction", "s--")):
        estimate_errorbar(axis, layers, [r[key] for r in rows], label, style)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel("layer")
    axis.set_ylabel("diagonal dominance (nats)")
    axis.legend(fontsize=8)
    page.figure(figure, "Steering effect per layer, alpha chosen on the select prompts, shown on held-out ones")
    plt.close(figure)
    page.table(
        ["layer", "alpha", "effect [95% CI]", "random", "effect - control (paired)", "neutral KL", "KL > limit at"],
        [
            (
                r["layer"],
                f"{r['alpha']:+g}" + ("" if r.get("usable", True) else " (none coherent)"),
                estimate_text(r["effect"]),
                estimate_text(r["control"]),
                estimate_text(r["difference"]),
                f"{r['neutral_kl']:.3f}",
                "-" if r["first_incoherent_alpha"] is None else r["first_incoherent_alpha"],
            )
            for r in rows
        ],
    )
    figure, axis = plt.subplots(figsize=(7, 3))
    for alpha in data["alphas"]:
        cells = [c for c in data["grid"] if c["alpha"] == alpha]
        kl = [max(c["neutral_kl"], KL_FLOOR) for c in cells]
        axis.plot([c["layer"] for c in cells], kl, marker=".", label=f"alpha {alpha:+g}")
    axis.axhline(data["kl_limit"], color="red", linestyle=":", label="coherence limit")
    axis.set_yscale("log")  # KL >= 0; values below KL_FLOOR are drawn at the floor
    axis.set_xlabel("layer")
    axis.set_ylabel("KL on neutral text (nats)")
    axis.legend(fontsize=6, ncol=2)
    page.figure(figure, "Coherence: next-token KL(unsteered || steered) on neutral text")
    plt.close(figure)
    emotions = data["emotions"]
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    matrix = np.asarray(data["matrix"])
    limit = float(np.abs(matrix).max()) or 1.0
    image = axis.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axis.set_xticks(range(len(emotions)), emotions, rotation=90, fontsize=7)
    axis.set_yticks(range(len(emotions)), emotions, fontsize=7)
    axis.set_xlabel("measured word")
    axis.set_ylabel("steered emotion")
    figure.colorbar(image, label="log-prob change")
    page.figure(figure, f"Steered x measured log-prob change at layer {data['best_layer']} (held-out prompts)")
    plt.close(figure)
    if data["generations"]:
        page.heading("Greedy continuations, unsteered and steered", level=3)
        for g in data["generations"]:
            side_by_side(
                page,
                f"unsteered: {g['prompt']}",
                g["unsteered"],
                f"{g['emotion']} alpha {g['alpha']:+g} at layer {g['layer']} (mean log-prob {g['steered_logprob']})",
                g["steered"],
            )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page summary: the steering effect at the layer chosen on the select prompts, beside its control."""
    best = next(r for r in data["per_layer"] if r["layer"] == data["best_layer"])
    return [
        (
            "feels: steering effect at the layer chosen on select prompts (vs random control; paired difference)",
            f"layer {best['layer']}, alpha {best['alpha']:+g}: "
            f"{estimate_text(best['effect'])} vs {estimate_text(best['control'])}; "
            f"{estimate_text(best['difference'])}",
            "steering shifts reported emotion (qualitative)",
        )
    ]
