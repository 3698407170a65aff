"""The command line every experiment shares: ``python -m experiments.NAME --model M [--vectors F] ...``.

Loads the model and its fitted vectors, calls the experiment's ``run``, writes
``OUT/results/NAME.json`` atomically and prints where it went. An experiment module's
``main`` is one line: ``experiment_main("feels", run, argv)``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emolens.allocator import retain_freed_memory
from emolens.files import atomic_write_text
from emolens.packaged_models import DEFAULT_MODEL

Runner = Callable[..., Any]


def default_vectors(model_name: str) -> Path:
    return Path("runs") / model_name / "vectors.safetensors"


def experiment_main(name: str, run: Runner, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Parse the shared arguments, run the experiment, write its results JSON; exit status 0/2."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="packaged model name (default %(default)s)")
    parser.add_argument("--vectors", default=None, help="fitted vectors (default runs/MODEL/vectors.safetensors)")
    parser.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"])
    parser.add_argument("--out", default=None, help="directory for results/NAME.json (default runs/MODEL)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    retain_freed_memory()
    try:
        from emolens.models import load_model
        from emolens.vectors import EmotionVectors

        vectors_path = Path(args.vectors) if args.vectors else default_vectors(args.model)
        if not vectors_path.exists():
            raise FileNotFoundError(
                f"{vectors_path} not found; fit first: emolens fit --model {args.model} --out {vectors_path.parent}"
            )
        vecs = EmotionVectors.load(vectors_path)
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        out = Path(args.out) if args.out else vectors_path.parent
        extra = {"workdir": out} if "workdir" in inspect.signature(run).parameters else {}
        started = time.perf_counter()
        result = run(model, vecs, profile=args.profile, seed=args.seed, **extra)
        data = result.to_dict()
        data.setdefault("seconds", round(time.perf_counter() - started, 1))
        path = atomic_write_text(out / "results" / f"{name}.json", json.dumps(data, indent=1))
    except (ValueError, FileNotFoundError) as err:
        print(f"{name}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{name}: wrote {path} ({data['seconds']} s)")
    return 0


def evenly_spaced(layers: Sequence[int], count: int | None) -> list[int]:
    """``count`` layers spread evenly over ``layers`` (first and last included); ``None``: all of them."""
    if count is None or count >= len(layers):
        return list(layers)
    if count == 1:
        return [layers[len(layers) // 2]]
    return sorted({layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)})
