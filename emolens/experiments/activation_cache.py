"""Cached activations for method studies: every story's window mean and each neutral set's token moments.

Fitting all 171 emotions at every layer costs minutes of both cores; a method variant
(which neutral set, how much denoising, which confounds to project out) is only linear
algebra on the same reductions. :func:`build_cache` runs the model once and writes, under
``DIR`` (default ``runs/<model>/cache/``, not in git):

- ``story_means.safetensors``: ``means`` (``story x layer x d_model``, the packaged stories
  in file order, window from ``window_start``) and a JSON sidecar with the model identity,
  the stories file's sha256 and the window;
- ``neutral_<set>.safetensors``: ``mean``, ``covariance``, ``mean_norm`` and ``count`` of
  :func:`emolens.extract.token_moments` for each neutral set (or ``neutral_<set>_part_<file>``
  for part files of a set still being written; parts are pooled exactly on load).

``python -m emolens.experiments.activation_cache --model NAME [--sets neutral narrative]``
(wrap it in ``flock /tmp/emolens-heavy.lock``: it loads a real model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.corpus import data_path, load_neutral, load_stories
from emolens.extract import DEFAULT_WINDOW_START, TokenMoments, text_means, token_moments
from emolens.files import atomic_write, atomic_write_text
from emolens.models import load_model, model_identity

NEUTRAL_SETS = {"neutral": "neutral.jsonl", "narrative": "neutral_narrative.jsonl"}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class StoryMeans:
    means: Float[Tensor, "story layer d_model"]
    metadata: dict[str, Any]


def save_story_means(model: HookedTransformer, directory: Path, window_start: int = DEFAULT_WINDOW_START) -> Path:
    """Window means of all packaged stories at all layers (one forward pass per story batch)."""
    stories = load_stories()
    means = text_means(model, [s.text for s in stories], "all", window_start=window_start, progress="stories")
    target = directory / "story_means.safetensors"
    atomic_write(target, lambda tmp: save_file({"means": means.contiguous()}, tmp))
    sidecar = {
        "model": model_identity(model),
        "stories_sha256": file_digest(data_path("stories.jsonl")),
        "window_start": window_start,
        "n_stories": len(stories),
    }
    atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=1))
    return target


def load_story_means(directory: Path) -> StoryMeans:
    """The cached story means; stale (another stories file) or missing caches are clear errors."""
    target = directory / "story_means.safetensors"
    if not target.exists():
        raise FileNotFoundError(f"{target} missing: build it with python -m emolens.experiments.activation_cache")
    metadata = json.loads(target.with_suffix(".json").read_text())
    if metadata["stories_sha256"] != file_digest(data_path("stories.jsonl")):
        raise ValueError(f"{target} was built from another stories.jsonl; rebuild the cache")
    return StoryMeans(load_file(str(target))["means"], metadata)


def text_digests(texts: list[str]) -> list[str]:
    """sha256 of each text, sorted: identifies a set of texts whatever file or order holds them."""
    return sorted(hashlib.sha256(text.encode()).hexdigest() for text in texts)


def save_neutral_moments(
    model: HookedTransformer,
    name: str,
    directory: Path,
    path: Path | None = None,
    window_start: int = DEFAULT_WINDOW_START,
) -> Path:
    """Token moments at all layers of neutral set ``name`` (:data:`NEUTRAL_SETS`), or of one part file of it.

    With ``path``, the texts of that file are a *part* of the set (saved as
    ``neutral_NAME_part_STEM``); :func:`load_neutral_moments` pools parts whose texts make
    up the packaged set exactly, so parts can be cached as they are written.
    """
    if name not in NEUTRAL_SETS:
        raise ValueError(f"unknown neutral set {name!r}; choose from {', '.join(NEUTRAL_SETS)}")
    source = path or data_path(NEUTRAL_SETS[name])
    texts = load_neutral(source)
    moments = token_moments(model, texts, "all", window_start=window_start, progress=source.name)
    tensors = {
        "mean": moments.mean,
        "covariance": moments.covariance,
        "mean_norm": moments.mean_norm,
        "count": torch.tensor([moments.count]),
    }
    stem = f"neutral_{name}" if path is None else f"neutral_{name}_part_{path.stem}"
    target = directory / f"{stem}.safetensors"
    atomic_write(target, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
    sidecar = {"model": model_identity(model), "source": str(source), "text_sha256s": text_digests(texts)}
    atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=1))
    return target


def _read_moments(target: Path) -> TokenMoments:
    tensors = load_file(str(target))
    return TokenMoments(int(tensors["count"][0]), tensors["mean"], tensors["covariance"], tensors["mean_norm"])


def load_neutral_moments(directory: Path, name: str) -> TokenMoments:
    """Cached token moments of the packaged neutral set ``name`` (whole, or pooled from parts holding its texts)."""
    expected = text_digests(load_neutral(data_path(NEUTRAL_SETS[name])))
    whole = directory / f"neutral_{name}.safetensors"
    if whole.exists() and json.loads(whole.with_suffix(".json").read_text())["text_sha256s"] == expected:
        return _read_moments(whole)
    parts = sorted(directory.glob(f"neutral_{name}_part_*.safetensors"))
    held = sorted(h for part in parts for h in json.loads(part.with_suffix(".json").read_text())["text_sha256s"])
    if parts and held == expected:
        return pool_moments([_read_moments(part) for part in parts])
    raise FileNotFoundError(
        f"no cached moments of the current {NEUTRAL_SETS[name]} in {directory}: "
        "build them with python -m emolens.experiments.activation_cache --sets " + name
    )


def pool_moments(parts: list[TokenMoments]) -> TokenMoments:
    """Moments of the union of several token sets (exact pooled covariance, weighted by token counts)."""
    count = sum(p.count for p in parts)
    mean = sum((p.mean.double() * p.count for p in parts), torch.zeros_like(parts[0].mean.double())) / count
    scatter = torch.zeros_like(parts[0].covariance.double())
    for p in parts:
        offset = p.mean.double() - mean
        scatter += (p.count - 1) * p.covariance.double() + p.count * einops.einsum(
            offset, offset, "layer i, layer j -> layer i j"
        )
    norms = sum((p.mean_norm.double() * p.count for p in parts), torch.zeros_like(parts[0].mean_norm.double()))
    return TokenMoments(count, mean.float(), (scatter / (count - 1)).float(), (norms / count).float())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=None, help="default runs/<model>/cache")
    parser.add_argument("--sets", nargs="*", default=["neutral"], help=f"neutral sets: {', '.join(NEUTRAL_SETS)}")
    parser.add_argument("--parts", nargs="*", default=[], metavar="SET=FILE", help="part files of a neutral set")
    parser.add_argument("--stories", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    directory = args.out or Path("runs") / args.model / "cache"
    model = load_model(args.model)
    for name in args.sets:
        print(f"wrote {save_neutral_moments(model, name, directory)}")
    for part in args.parts:
        name, _, file = part.partition("=")
        print(f"wrote {save_neutral_moments(model, name, directory, Path(file))}")
    if args.stories:
        print(f"wrote {save_story_means(model, directory)}")


if __name__ == "__main__":
    main()
