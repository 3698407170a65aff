"""Benchmarks: model load time, extraction throughput against plain transformers, peak memory of a fit.

``python -m experiments.benchmark [load|throughput|memory|all] [--models ...]`` prints
markdown tables and writes ``runs/bench/NAME.json``. Each load is timed in a fresh
process (import time reported separately); cold loads use an empty cache directory.
Throughput is a ratio against the plain transformers forward of the same model without
the LM head, on the same batches, in the same process: the median over interleaved repeats
of each repeat's paired ratio (a shared machine drifts; pairing cancels slow drift).
Both sides run under the allocator setting of ``emolens`` commands
(:func:`emolens.allocator.retain_freed_memory`) unless ``--allocator glibc`` is given.
Memory is the peak RSS (Linux VmHWM, reset after the model is loaded) of a fit subprocess
on N and on 4N stories, so streaming shows as equal peaks. (``ru_maxrss`` would not do: Linux keeps it across
``execve``, so a child started by a large parent reports the parent's size.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emolens.allocator import retain_freed_memory
from experiments.bench_allocator import bench_allocator
from experiments.bench_choice import bench_choice
from experiments.bench_interventions import bench_generate, bench_ray, bench_sweep
from experiments.bench_monitor import bench_monitor

PACKAGED = ["gemma-3-270m", "smollm2-135m-instruct"]
OUT = Path("runs/bench")

_LOAD_PROBE = """
import json, time
t0 = time.perf_counter()
from emolens.models import load_model
t1 = time.perf_counter()
load_model({name!r}, device="cpu")
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1}}))
"""

_FIT_PROBE = """
import json
from pathlib import Path

from emolens.corpus import load_neutral, load_stories
from emolens.fit import fit_emotion_vectors
from emolens.models import load_model

def status_mib(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) / 1024

model = load_model({name!r}, device="cpu")
after_load = status_mib("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
stories = load_stories(split="train")[: {n_stories}]
emotions = sorted({{s.emotion for s in stories}})
fit_emotion_vectors(model, stories=stories, neutral=load_neutral()[:40], emotions=emotions)
print(json.dumps({{"after_load_mib": after_load, "peak_mib": status_mib("VmHWM:")}}))
"""


@dataclass
class LoadTimes:
    model: str
    cold_s: float
    warm_s: float
    import_s: float
    runs: int


def _probe(code: str, env_cache: str | None = None) -> dict[str, float]:
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if env_cache is not None:
        env["EMOLENS_CACHE"] = env_cache
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_load(name: str, runs: int = 3) -> LoadTimes:
    """Median cold (empty cache) and warm (cached) load time in fresh processes."""
    code = _LOAD_PROBE.format(name=name)
    cold, warm, imports = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="emolens-bench-") as cache:
            cold.append(_probe(code, cache)["load_s"])
            measured = _probe(code, cache)
            warm.append(measured["load_s"])
            imports.append(measured["import_s"])
    return LoadTimes(name, statistics.median(cold), statistics.median(warm), statistics.median(imports), runs)


@dataclass
class Throughput:
    model: str
    path: str  # "transformer_lens", "fused attention", "fused attention + weight layout" (the default)
    workload: str
    tokens: int
    emolens_tokens_per_s: float  # median over repeats
    hf_tokens_per_s: float
    ratio: float  # median over repeats of the paired ratio (transformers time / emolens time, same repeat)
    ratio_low: float  # lowest and highest paired ratio: the machine's drift shows here
    ratio_high: float
    allocator: str  # "retain" (freed blocks kept, as emolens commands run) or "glibc" (its defaults)


PATHS = {  # label: (fused attention, weights laid out for F.linear)
    "transformer_lens": (False, False),
    "fused attention": (True, False),
    "fused attention + weight layout": (True, True),
}


def bench_throughput(
    name: str, repeats: int = 5, paths: tuple[str, ...] = tuple(PATHS), allocator: str = "retain"
) -> list[Throughput]:
    """The fit's all-layer extraction (``text_means``) on each path of :mod:`emolens.fast_forward` vs transformers.

    Two workloads: 96 training stories (the fit's large batches) and 12 short snippets
    forwarded 20 times (the small batches of sweep cells, choices and generation). The HF
    forward has no LM head; every path runs the same batches in one process, interleaved.
    """
    from emolens.corpus import load_neutral, load_stories
    from emolens.models import load_hf_model, load_model

    model = load_model(name, device="cpu")
    hf_model, _ = load_hf_model(name)
    stories = [s.text for s in load_stories(split="train")[:96]]
    snippets = [text[:80] for text in load_neutral()[:12]]
    return [
        *_throughput(model, hf_model, name, "96 stories", stories, 1, repeats, paths, allocator),
        *_throughput(model, hf_model, name, "12 snippets x 20", snippets, 20, repeats, paths, allocator),
    ]


def _throughput(
    model: Any,
    hf_model: Any,
    name: str,
    workload: str,
    texts: list[str],
    loops: int,
    repeats: int,
    paths: tuple[str, ...],
    allocator: str,
) -> list[Throughput]:
    import torch

    from emolens.extract import batches, text_means
    from emolens.fast_forward import disable_fast_attention, enable_fast_attention, store_weights_for_linear

    planned = batches(model, texts)
    n_tokens = loops * sum(b.tokens.numel() for b in planned)  # padded positions: both sides compute them

    def configure(fast: bool, layout: bool) -> Callable[[], None]:
        def setup() -> None:
            (enable_fast_attention if fast else disable_fast_attention)(model)
            for param in model.parameters():  # TransformerLens' own layout, then ours if asked
                param.data = param.data.contiguous()
            if layout:
                store_weights_for_linear(model)

        return setup

    def ours() -> None:
        for _ in range(loops):
            text_means(model, texts)

    def theirs() -> None:
        with torch.inference_mode():
            for _ in range(loops):
                for batch in planned:
                    hf_model.model(input_ids=batch.tokens)  # right padding: causal attention needs no mask

    runs = {label: (configure(*PATHS[label]), ours) for label in paths} | {"theirs": (lambda: None, theirs)}
    timings: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):  # interleaved, so drift hits all alike; set-up is not timed
        for label, (setup, run) in runs.items():
            setup()
            started = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - started)
    theirs_s = statistics.median(timings["theirs"])
    rows = []
    for label in paths:
        paired = [t / o for t, o in zip(timings["theirs"], timings[label], strict=True)]
        rows.append(
            Throughput(
                name,
                label,
                workload,
                n_tokens,
                n_tokens / statistics.median(timings[label]),
                n_tokens / theirs_s,
                statistics.median(paired),
                min(paired),
                max(paired),
                allocator,
            )
        )
    return rows


@dataclass
class Memory:
    model: str
    stories: int
    after_load_mib: float
    peak_mib: float


def bench_memory(name: str, n_stories: int = 120) -> list[Memory]:
    """Peak RSS of fitting on ``n_stories`` and on 4x as many (fresh process each)."""
    out = []
    for n in (n_stories, 4 * n_stories):
        measured = _probe(_FIT_PROBE.format(name=name, n_stories=n))
        out.append(Memory(name, n, round(measured["after_load_mib"]), round(measured["peak_mib"])))
    return out


def _table(rows: list[object]) -> str:
    dicts = [asdict(r) for r in rows]  # type: ignore[call-overload]
    header = "| " + " | ".join(dicts[0]) + " |\n|" + "---|" * len(dicts[0]) + "\n"
    body = "".join(
        "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in d.values()) + " |\n" for d in dicts
    )
    return header + body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["load", "throughput", "allocator", "memory", "sweep", "generate", "ray", "monitor", "choice", "all"],
    )
    parser.add_argument("--models", nargs="+", default=PACKAGED)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="throughput: paths")
    parser.add_argument("--repeats", type=int, default=5, help="throughput, allocator: interleaved repeats")
    parser.add_argument(
        "--allocator", default="retain", choices=["retain", "glibc"], help="retain: as emolens commands run"
    )
    args = parser.parse_args(argv)
    if args.allocator == "retain" and not retain_freed_memory():
        args.allocator = "glibc"  # not glibc: nothing to change
    OUT.mkdir(parents=True, exist_ok=True)
    benches: dict[str, Callable[[str], object]] = {
        "load": bench_load,
        "throughput": lambda name: bench_throughput(name, args.repeats, tuple(args.paths), args.allocator),
        "allocator": lambda name: bench_allocator(name, args.repeats),
        "memory": bench_memory,
        "sweep": bench_sweep,
        "generate": bench_generate,
        "ray": bench_ray,
        "monitor": bench_monitor,
        "choice": bench_choice,
    }
    for what, bench in benches.items():
        if args.what not in (what, "all"):
            continue
        rows: list[object] = []
        for name in args.models:
            result = bench(name)
            rows.extend(result if isinstance(result, list) else [result])
        (OUT / f"{what}.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))  # type: ignore[call-overload]
        print(f"\n## {what}\n\n{_table(rows)}")


if __name__ == "__main__":
    main()
