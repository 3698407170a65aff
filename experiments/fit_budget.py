"""What a smaller fit costs: held-out accuracy against training stories per emotion and neutral texts.

The fit's model cost is one forward pass per text, so a 2-core profile can only be faster
by reading fewer texts. This study measures what that costs in held-out accuracy. The
model runs once: every packaged story's window mean at every layer, and the token moments
of the even- and odd-numbered neutral texts. The moments of both halves pool exactly into
those of all neutral texts. Then, with no more model cost, for each number ``n`` of
training stories per emotion and each neutral set (all, every other text), the study's
recipe is fitted (``emolens.fit.mean_diff``, denoising 0.5) and read on the held-out
validation stories at the default layer. The reading is raw: centred projections ranked
among the 171 emotions, as the validation stage ranks them.

- **first n**: the first ``n`` training stories of each emotion in file order, as
  ``emolens run --profile cpu`` takes them. Top-5 and top-1 carry bootstrap 95% intervals
  that resample emotions.
- **random n**: 5 seeded draws of ``n`` stories per emotion, as mean and standard deviation.

``python -m experiments.fit_budget --model gemma-3-270m`` (about 16 minutes of 2 cores). The
reductions are kept in ``runs/bench/fit_budget-MODEL.safetensors`` and reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import einops
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emolens.allocator import retain_freed_memory
from emolens.concepts import emotions as all_emotions
from emolens.corpus import load_neutral, load_stories
from emolens.extract import ReadOptions, TokenMoments, TokenMomentsReducer, check_layers, reduce, text_means
from emolens.files import atomic_write, atomic_write_text
from emolens.fit import FitInputs, choose_default_layer, emotion_means, mean_diff, unit_vectors
from emolens.models import load_model
from emolens.validation import emotion_bootstrap, ranks_of_truth

COUNTS = (10, 8, 6, 5, 4, 3)
DRAWS = 5


def reductions(model_name: str, path: Path) -> dict[str, torch.Tensor]:
    """Story means (``story x layer x d_model``, training then validation split) and neutral half moments."""
    if path.exists():
        return load_file(path)
    model = load_model(model_name, device="cpu")
    options = ReadOptions(layers=check_layers(model, "all"), window_start=50, progress="texts")
    neutral = load_neutral()
    out: dict[str, torch.Tensor] = {}
    for half, texts in (("even", neutral[0::2]), ("odd", neutral[1::2])):
        reducer = TokenMomentsReducer(model.cfg.n_layers, model.cfg.d_model)
        reduce(model, texts, options, [reducer])
        moments = reducer.result()
        out |= {f"{half}_mean": moments.mean, f"{half}_cov": moments.covariance, f"{half}_norm": moments.mean_norm}
        out[f"{half}_count"] = torch.tensor([moments.count])
    stories = load_stories(split="train") + load_stories(split="validation")
    out["story_means"] = text_means(model, [s.text for s in stories], options)
    atomic_write(path, lambda tmp: save_file(out, tmp))
    return out


def pooled(data: dict[str, torch.Tensor], halves: list[str], layer: int) -> TokenMoments:
    """Token moments at ``layer`` of the union of neutral halves (exact pooling of counts, means and covariances)."""
    counts = torch.tensor([float(data[f"{h}_count"]) for h in halves], dtype=torch.float64)
    means = torch.stack([data[f"{h}_mean"][layer : layer + 1].double() for h in halves])  # half 1 d
    covariances = torch.stack([data[f"{h}_cov"][layer : layer + 1].double() for h in halves])  # half 1 d d
    norms = torch.stack([data[f"{h}_norm"][layer : layer + 1].double() for h in halves])  # half 1
    total = int(counts.sum())
    mean = einops.einsum(counts, means, "half, half l d -> l d") / total
    spread = means - mean
    scatter = einops.einsum(counts - 1, covariances, "half, half l i j -> l i j") + einops.einsum(
        counts, spread, spread, "half, half l i, half l j -> l i j"
    )
    norm = einops.einsum(counts, norms, "half, half l -> l") / total
    return TokenMoments(total, mean.float(), (scatter / (total - 1)).float(), norm.float())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    retain_freed_memory()
    data = reductions(args.model, args.out / f"fit_budget-{args.model}.safetensors")
    names = list(all_emotions())
    train, held_out = load_stories(split="train"), load_stories(split="validation")
    labels = np.array([names.index(s.emotion) for s in train + held_out])
    n_layers, n_train = data["story_means"].shape[1], len(train)
    layer, _ = choose_default_layer(n_layers, list(range(n_layers)))
    means = data["story_means"][:, layer]  # the recipe is per layer: fit and read the default layer only
    truth = torch.tensor(labels[n_train:])
    by_emotion = [np.flatnonzero(labels[:n_train] == e) for e in range(len(names))]

    def ranks(picked: np.ndarray, neutral: TokenMoments) -> np.ndarray:
        inputs = FitInputs(means[picked, None], labels[picked].tolist(), names, [layer], neutral, 0.5)
        vectors, center = unit_vectors(mean_diff(inputs))[0], emotion_means(inputs)[0].mean(0)
        scores = torch.einsum("td,ed->te", means[n_train:] - center, vectors)
        return ranks_of_truth(scores, truth).numpy()

    rows = []
    for neutral_name, halves in (("all", ["even", "odd"]), ("every other", ["even"])):
        neutral = pooled(data, halves, layer)
        for n in COUNTS:
            first = ranks(np.concatenate([stories[:n] for stories in by_emotion]), neutral)
            top5, top1 = (emotion_bootstrap((first < k).astype(float), truth.numpy()) for k in (5, 1))
            rng = np.random.default_rng(0)
            draws = [
                (ranks(np.concatenate([rng.choice(s, n, replace=False) for s in by_emotion]), neutral) < 5).mean()
                for _ in range(DRAWS if n < len(by_emotion[0]) else 0)
            ]
            rows.append({
                "neutral": neutral_name, "stories_per_emotion": n, "layer": layer,
                "top5": top5.to_dict(), "top1": top1.to_dict(),
                "random_top5_mean": float(np.mean(draws)) if draws else None,
                "random_top5_sd": float(np.std(draws)) if draws else None,
            })  # fmt: skip
            random = f"{np.mean(draws):.3f} +- {np.std(draws):.3f}" if draws else "(all stories)"
            print(f"| {neutral_name} | {n} | {top5.value:.3f} [{top5.low:.3f}, {top5.high:.3f}] | "
                  f"{top1.value:.3f} [{top1.low:.3f}, {top1.high:.3f}] | {random} |")  # fmt: skip
    atomic_write_text(args.out / f"fit_budget-{args.model}.json", json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
