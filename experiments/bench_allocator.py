"""Benchmark: the fit's extraction with glibc's default allocator settings against ``retain_freed_memory``.

The setting is per process and cannot be undone in place, so each measurement is a fresh
process: load the model, warm up on a few texts, then time ``text_means`` once. The two
settings alternate in ABBA order and each repeat's two processes form a pair, so slow
drift of a shared machine cancels in the paired ratio (glibc time / retained time).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass

_PROBE = """
import json, resource, time
from pathlib import Path
from emolens.allocator import retain_freed_memory
if {retain}:
    assert retain_freed_memory()
from emolens.corpus import load_neutral, load_stories
from emolens.extract import text_means
from emolens.models import load_model
model = load_model({name!r}, device="cpu")
if {workload!r} == "96 stories":
    texts, loops = [s.text for s in load_stories(split="train")[:96]], 1
else:
    texts, loops = [text[:80] for text in load_neutral()[:12]], 20
text_means(model, texts[:8])  # warm-up
faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for _ in range(loops):
    text_means(model, texts)
seconds = time.perf_counter() - started
peak = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": seconds, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                  "peak_mib": int(peak.split()[1]) / 1024}}))
"""
WORKLOADS = ("96 stories", "12 snippets x 20")


@dataclass
class AllocatorPair:
    model: str
    workload: str
    glibc_s: float  # medians over repeats
    retained_s: float
    speedup: float  # median over repeats of the paired ratio glibc time / retained time
    speedup_low: float
    speedup_high: float
    glibc_minor_faults: int  # medians, in the timed part
    retained_minor_faults: int
    glibc_peak_mib: float  # whole process (the model load included)
    retained_peak_mib: float
    repeats: int


def _measure(name: str, workload: str, retain: bool) -> dict[str, float]:
    code = _PROBE.format(name=name, workload=workload, retain=retain)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_allocator(name: str, repeats: int = 4) -> list[AllocatorPair]:
    """Paired fresh-process timings of both settings on the throughput benchmark's two workloads."""
    rows = []
    for workload in WORKLOADS:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for repeat in range(repeats):
            for retain in (False, True) if repeat % 2 == 0 else (True, False):
                runs[retain].append(_measure(name, workload, retain))
        paired = [g["seconds"] / r["seconds"] for g, r in zip(runs[False], runs[True], strict=True)]

        def median(retain: bool, key: str, runs: dict[bool, list[dict[str, float]]] = runs) -> float:
            return statistics.median(run[key] for run in runs[retain])

        rows.append(
            AllocatorPair(
                name,
                workload,
                median(False, "seconds"),
                median(True, "seconds"),
                statistics.median(paired),
                min(paired),
                max(paired),
                int(median(False, "faults")),
                int(median(True, "faults")),
                median(False, "peak_mib"),
                median(True, "peak_mib"),
                repeats,
            )
        )
    return rows
