"""Benchmark of ``emolens.monitor``: per-token readings during generation vs plain ``model.generate``.

Both produce the same number of greedy tokens from the same prompt with the KV cache (no
early stop); runs alternate so drift hits both alike, and the median of ``repeats`` is kept.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MonitorSpeed:
    model: str
    new_tokens: int
    generate_s: float
    monitor_s: float
    ratio: float  # monitor / generate; the target is <= 1.1
    calibrated: bool


def bench_monitor(name: str, vectors: str | None = None, new_tokens: int = 48, repeats: int = 5) -> MonitorSpeed:
    import torch

    from emolens.models import load_model
    from emolens.monitor import monitor
    from emolens.vectors import EmotionVectors

    path = Path(vectors) if vectors else Path("runs") / name / "vectors.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `emolens fit --model {name} --out {path.parent}` first")
    model, vecs = load_model(name, device="cpu"), EmotionVectors.load(path)
    prompt = "The letter arrived on a Tuesday morning, and when she opened it"
    tokens = model.to_tokens(prompt)

    def generate() -> None:
        with torch.inference_mode():
            model.generate(tokens, max_new_tokens=new_tokens, do_sample=False, verbose=False, stop_at_eos=False)

    calibrated = vecs.calibration is not None  # calibrated readings when the vectors have a calibration

    def monitored() -> None:
        list(monitor(model, vecs, prompt, max_new_tokens=new_tokens, stop_at_eos=False, calibrated=calibrated))

    timings: dict[str, list[float]] = {"generate": [], "monitor": []}
    generate()  # warm-up
    monitored()
    for _ in range(repeats):
        for label, run in (("generate", generate), ("monitor", monitored)):
            started = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - started)
    plain, live = statistics.median(timings["generate"]), statistics.median(timings["monitor"])
    return MonitorSpeed(name, new_tokens, round(plain, 3), round(live, 3), round(live / plain, 3), calibrated)
