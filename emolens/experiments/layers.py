"""Layers: how similar the emotion geometry is across depth, and where earlier context reaches later tokens.

Two measurements:

1. **Geometry across layers** (vectors only): linear CKA between the ``emotion x d_model``
   vector matrices of every two layers, and the Pearson correlation of their emotion x
   emotion cosine matrices (upper triangles).
2. **Context divergence** (forward passes): each item is one later clause (``suffix``)
   preceded by two *emotional* openings of opposite valence ("After the funeral" /
   "After the wedding") and by two *neutral* openings ("After the meeting" / "After the
   seminar"). The suffix's tokens are identical in all four texts; per layer we read them
   with ``vecs.project`` and measure how far the two readings are apart (mean over the
   shared suffix tokens of the L2 distance of the 171-emotion reading vectors, in units
   of the layer's mean residual norm). The emotional pairs are compared with the neutral
   control pairs of the same item (paired bootstrap over items). The *valence alignment*
   is the Pearson r, across emotions with human ratings, between the reading difference
   (negative opening minus positive opening) and human valence: negative when the earlier
   clause's feeling reaches the later tokens the way humans would rate it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.experiments.geometry import rated
from emolens.extract import stream_resid, tokenize
from emolens.files import atomic_write_text
from emolens.models import load_model
from emolens.stats import Estimate, bootstrap, estimate_text
from emolens.vectors import EmotionVectors

MIN_SHARED_TOKENS = 3


@dataclass(frozen=True)
class ClauseItem:
    suffix: str  # the later clause, identical in all four texts
    negative: str  # emotional opening, negative valence
    positive: str  # emotional opening, positive valence
    neutral_a: str  # control openings, emotionally neutral
    neutral_b: str

    def texts(self) -> list[str]:
        return [opening + self.suffix for opening in (self.negative, self.positive, self.neutral_a, self.neutral_b)]


ITEMS = (
    ClauseItem(", she opened the door and sat down at the kitchen table.", "After the funeral", "After the wedding",
               "After the meeting", "After the seminar"),
    ClauseItem(", he put the phone down and looked out of the window.", "When the biopsy came back malignant",
               "When the biopsy came back benign", "When the form came back stamped", "When the form came back signed"),
    ClauseItem(", she drove to the station and waited on the platform.", "The day her son went missing",
               "The day her son came home safe", "The day her son renewed his passport",
               "The day her son repainted the fence"),
    ClauseItem(", he walked home slowly through the park.", "Having lost the job he had held for ten years",
               "Having won the job he had dreamed of for ten years",
               "Having printed the report he had drafted on Monday",
               "Having filed the report he had drafted on Tuesday"),
    ClauseItem(", the family sat together in the living room.", "Right after the old dog was put down",
               "Right after the new puppy was brought home", "Right after the old car was washed",
               "Right after the new car was parked"),
    ClauseItem(", she read it twice and set it on the counter.", "Once the eviction notice arrived",
               "Once the acceptance letter arrived", "Once the water bill arrived", "Once the gas bill arrived"),
    ClauseItem(", the old man walked down the main street.", "After the earthquake destroyed the town",
               "After the festival filled the town", "After the census counted the town",
               "After the survey mapped the town"),
    ClauseItem(", they drove home without stopping.", "Because the surgeon said there was nothing more to do",
               "Because the surgeon said the operation was a complete success",
               "Because the clerk said the office closed at five", "Because the clerk said the office opened at nine"),
    ClauseItem(", he called his mother.", "Hours after the crash that killed his brother",
               "Hours after the birth of his first daughter", "Hours after the delivery of his new desk",
               "Hours after the installation of his new printer"),
    ClauseItem(", Maria made coffee and sat by the window.", "The morning the bank took the house",
               "The morning they got the keys to their dream house", "The morning they measured the house",
               "The morning they inspected the house"),
    ClauseItem(", the boy walked home along the river.", "After being beaten up again at school",
               "After being praised again at school", "After being photographed again at school",
               "After being registered again at school"),
    ClauseItem(", they sat in the car park for a while.", "When the doctor told them the baby had no heartbeat",
               "When the doctor told them the baby was healthy", "When the doctor told them the clinic had moved",
               "When the doctor told them the clinic had a new phone number"),
    ClauseItem(", Tom stayed at the office late into the evening.", "After he was betrayed by his business partner",
               "After he was thanked by his business partner", "After he was emailed by his business partner",
               "After he was phoned by his business partner"),
    ClauseItem(", she set the table for dinner.", "Knowing the war had taken both her sons",
               "Knowing the war had spared both her sons", "Knowing the post had delayed both her parcels",
               "Knowing the post had sorted both her parcels"),
)  # fmt: skip


def shared_suffix_length(model: HookedTransformer, texts: list[str]) -> int:
    """Number of trailing tokens identical in all ``texts``."""
    ids = tokenize(model, texts)
    shortest = min(len(row) for row in ids)
    count = 0
    while count < shortest and len({row[len(row) - 1 - count] for row in ids}) == 1:
        count += 1
    return count


def suffix_readings(
    model: HookedTransformer, vecs: EmotionVectors, texts: list[str], n_suffix: list[int]
) -> list[Float[Tensor, "layer suffix emotion"]]:
    """Per text, the readings of its last ``n_suffix[i]`` tokens at every fitted layer (no logits)."""
    out: list[Tensor | None] = [None] * len(texts)
    for batch, resid in stream_resid(model, texts, vecs.layers, window_start=0):
        for row, text_index in enumerate(batch.indices):
            end = int(batch.lengths[row])
            tokens = resid[:, row, end - n_suffix[text_index] : end]
            out[text_index] = torch.stack([vecs.project(tokens[i], layer) for i, layer in enumerate(vecs.layers)]).cpu()
    return [t for t in out if t is not None]


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """Linear centred kernel alignment of two representations of the same ``n`` items."""
    a, b = x.double() - x.double().mean(dim=0), y.double() - y.double().mean(dim=0)
    cross = (einops.einsum(a, b, "n i, n j -> i j") ** 2).sum()
    norm_a = (einops.einsum(a, a, "n i, n j -> i j") ** 2).sum().sqrt()
    norm_b = (einops.einsum(b, b, "n i, n j -> i j") ** 2).sum().sqrt()
    return float(cross / (norm_a * norm_b))


def geometry_similarity(vecs: EmotionVectors) -> tuple[np.ndarray, np.ndarray]:
    """``layer x layer`` linear CKA and correlation of the cosine matrices' upper triangles."""
    unit = vecs.vectors / vecs.vectors.norm(dim=-1, keepdim=True)
    cosines = einops.einsum(unit, unit, "layer e1 d, layer e2 d -> layer e1 e2")
    upper = torch.triu_indices(unit.shape[1], unit.shape[1], offset=1)
    flat = cosines[:, upper[0], upper[1]].double().numpy()
    n = len(vecs.layers)
    cka = np.array([[linear_cka(vecs.vectors[i], vecs.vectors[j]) for j in range(n)] for i in range(n)])
    return cka, np.corrcoef(flat)


@dataclass
class LayersResult:
    layers: list[int]
    default_layer: int
    cka: list[list[float]]
    cosine_correlation: list[list[float]]
    items: list[dict[str, Any]]
    per_layer: list[dict[str, Any]]
    first_divergent_layer: int | None  # first layer whose emotional-minus-control distance CI is above 0
    first_aligned_layer: int | None  # first layer whose valence-alignment CI is below 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair_measures(
    a: Tensor, b: Tensor, norms: Tensor, valence_index: np.ndarray, valence: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: distance (units of residual norm) and valence alignment of reading ``a`` minus ``b``."""
    difference = a - b  # layer suffix emotion
    distance = (difference.norm(dim=-1).mean(dim=-1) / norms).numpy()
    profile = difference.mean(dim=1).double().numpy()[:, valence_index]
    alignment = np.array([np.corrcoef(row, valence)[0, 1] if np.ptp(row) > 0 else 0.0 for row in profile])
    return distance, alignment


def run(
    model: HookedTransformer, vecs: EmotionVectors, profile: str = "cpu", seed: int = 0, **kwargs: Any
) -> LayersResult:
    """Layer similarity of the geometry, and per-layer divergence of readings on shared later clauses."""
    if profile not in ("quick", "cpu", "full"):
        raise ValueError(f"profile must be quick|cpu|full, got {profile!r}")
    vecs.check_model(model)
    items = list(ITEMS[:6] if profile == "quick" else ITEMS)
    shared = [shared_suffix_length(model, item.texts()) for item in items]
    short = [item.suffix for item, n in zip(items, shared, strict=True) if n < MIN_SHARED_TOKENS]
    if short:
        raise ValueError(f"suffix shares < {MIN_SHARED_TOKENS} tokens across its openings: {short[0]!r}")
    texts = [text for item in items for text in item.texts()]
    readings = suffix_readings(model, vecs, texts, [n for n in shared for _ in range(4)])
    valence_index, ratings = rated(vecs.emotions)
    norms = vecs.resid_norms.float()
    measures = []
    for i in range(len(items)):
        negative, positive, neutral_a, neutral_b = readings[4 * i : 4 * i + 4]
        measures.append(
            (
                *_pair_measures(negative, positive, norms, valence_index, ratings["valence"]),
                *_pair_measures(neutral_a, neutral_b, norms, valence_index, ratings["valence"]),
            )
        )
    emotional, aligned, control, control_aligned = (np.stack(m) for m in zip(*measures, strict=True))  # item layer
    per_layer: list[dict[str, Any]] = []
    for column, layer in enumerate(vecs.layers):

        def estimate(values: np.ndarray) -> Estimate:
            return bootstrap(lambda idx: float(values[idx].mean()), values.size, seed=seed)

        per_layer.append(
            {
                "layer": layer,
                "emotional_distance": estimate(emotional[:, column]).to_dict(),
                "control_distance": estimate(control[:, column]).to_dict(),
                "difference": estimate(emotional[:, column] - control[:, column]).to_dict(),
                "valence_alignment": estimate(aligned[:, column]).to_dict(),
                "control_alignment": estimate(control_aligned[:, column]).to_dict(),
            }
        )
    cka, cosine_correlation = geometry_similarity(vecs)
    return LayersResult(
        layers=list(vecs.layers),
        default_layer=vecs.default_layer,
        cka=np.round(cka, 4).tolist(),
        cosine_correlation=np.round(cosine_correlation, 4).tolist(),
        items=[{**asdict(item), "shared_tokens": n} for item, n in zip(items, shared, strict=True)],
        per_layer=per_layer,
        first_divergent_layer=next((row["layer"] for row in per_layer if row["difference"]["low"] > 0), None),
        first_aligned_layer=next((row["layer"] for row in per_layer if row["valence_alignment"]["high"] < 0), None),
    )


def render(page: Any, data: dict[str, Any]) -> None:
    """Similarity heatmaps, the divergence curves with CIs, and the items table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    page.heading("Layers: geometry across depth and where earlier context reaches later tokens")
    layers = data["layers"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    for axis, key, title in zip(
        axes, ("cka", "cosine_correlation"), ("linear CKA", "r of cosine matrices"), strict=True
    ):
        image = axis.imshow(np.array(data[key]), vmin=0, vmax=1, cmap="viridis")
        axis.set_title(title)
        axis.set_xlabel("layer index")
        axis.set_ylabel("layer index")
        figure.colorbar(image, ax=axis, fraction=0.046)
    page.figure(figure, f"Similarity of the emotion geometry between layers {layers[0]}..{layers[-1]}")
    plt.close(figure)

    rows = data["per_layer"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("emotional_distance", "emotional openings"), ("control_distance", "neutral openings")):
        axes[0].plot(layers, [r[key]["value"] for r in rows], marker="o", label=label)
        axes[0].fill_between(layers, [r[key]["low"] for r in rows], [r[key]["high"] for r in rows], alpha=0.2)
    axes[0].set_ylabel("reading distance / mean resid norm")
    for key, label in (("valence_alignment", "emotional pairs"), ("control_alignment", "neutral pairs")):
        axes[1].plot(layers, [r[key]["value"] for r in rows], marker="o", label=label)
        axes[1].fill_between(layers, [r[key]["low"] for r in rows], [r[key]["high"] for r in rows], alpha=0.2)
    axes[1].axhline(0, color="grey", linestyle=":")
    axes[1].set_ylabel("r(negative - positive reading, valence)")
    for axis in axes:
        axis.set_xlabel("layer")
        axis.legend(fontsize=7)
    page.figure(figure, "Readings of identical later tokens after different openings (shaded: 95% CI over items)")
    plt.close(figure)
    page.paragraph(
        f"First layer where emotional openings separate the later tokens more than neutral ones (CI above 0): "
        f"{data['first_divergent_layer']}; first layer where the separation follows human valence (CI below 0): "
        f"{data['first_aligned_layer']}."
    )
    page.table(
        ["negative / positive opening", "neutral openings", "shared later clause", "tokens"],
        [
            [
                f"{i['negative']} / {i['positive']}",
                f"{i['neutral_a']} / {i['neutral_b']}",
                i["suffix"],
                i["shared_tokens"],
            ]
            for i in data["items"]
        ],
    )


def headlines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Index-page rows: where earlier emotional context first reaches later tokens."""
    row = next(r for r in data["per_layer"] if r["layer"] == data["default_layer"])
    alignment = row["valence_alignment"]
    return [
        ("first layer where an emotional earlier clause moves later readings more than a neutral one",
         str(data["first_divergent_layer"]), ""),
        (f"r(reading shift, human valence) on later tokens (layer {data['default_layer']})",
         estimate_text(alignment, 2), ""),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.layers --model NAME [--vectors F] [--profile P] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--vectors", type=Path, default=None)
    parser.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / args.model
    path = args.vectors or out / "vectors.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: fit vectors first with `emolens fit --model {args.model}`")
    vecs = EmotionVectors.load(path)
    result = run(load_model(args.model), vecs, args.profile, args.seed)
    target = out / "results" / "layers.json"
    atomic_write_text(target, json.dumps(result.to_dict(), indent=1))
    print(
        f"first divergent layer {result.first_divergent_layer}, first valence-aligned layer "
        f"{result.first_aligned_layer}; wrote {target}"
    )
