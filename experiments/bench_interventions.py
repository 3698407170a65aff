"""Benchmarks of the interventions: the sweep engine against the obvious loop, steered generation.

- ``bench_sweep``: 4 emotions x 6 layers x 5 alphas on 16 prompts. The obvious loop is
  what a user writes with the public context manager: per cell,
  ``with steer(...): model(tokens)`` on the same padded batch, then the last-token
  log-probs and KL. Both produce the same rows (checked here within 1e-4); the ratio is
  sweep time / loop time (lower is better; target <= 0.5).
- ``bench_generate``: greedy generation of 32 new tokens with the KV cache, steered
  (``positions="all"`` and ``"generated"``) vs unsteered (target <= 1.1x).

Both need fitted vectors (``runs/MODEL/vectors.safetensors`` or ``--vectors``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from transformer_lens import HookedTransformer

from emolens.vectors import EmotionVectors

EMOTIONS = ["happy", "sad", "calm", "afraid"]
ALPHAS = [-0.5, -0.1, 0.0, 0.1, 0.5]


@dataclass
class SweepSpeed:
    model: str
    cells: int
    prompts: int
    sweep_s: float
    loop_s: float
    ratio: float
    max_abs_diff: float


@dataclass
class GenerateSpeed:
    model: str
    new_tokens: int
    plain_s: float
    steered_all_s: float
    steered_generated_s: float
    ratio_all: float
    ratio_generated: float


def _load(name: str, vectors: str | None) -> tuple[HookedTransformer, EmotionVectors]:
    from emolens.models import load_model

    path = Path(vectors) if vectors else Path("runs") / name / "vectors.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `emolens fit --model {name} --out {path.parent}` first")
    return load_model(name, device="cpu"), EmotionVectors.load(path)


def bench_sweep(name: str, vectors: str | None = None, repeats: int = 1) -> SweepSpeed:
    import torch

    from emolens.corpus import data_path, read_jsonl
    from emolens.steer import steer
    from emolens.sweep import prompt_batch, sweep, target_token_ids

    model, vecs = _load(name, vectors)
    prompts = [row["text"] for row in read_jsonl(data_path("feels_prompts.jsonl"))][:16]
    n = model.cfg.n_layers
    layers = sorted({round(i * (n - 1) / 5) for i in range(6)})
    batch = prompt_batch(model, prompts)
    rows_index = torch.arange(len(prompts))
    target_ids = target_token_ids(model, EMOTIONS)

    def loop() -> dict[tuple[str, int, float], torch.Tensor]:
        out = {}
        with torch.inference_mode():
            base = torch.log_softmax(model(batch.tokens)[rows_index, batch.last].float(), dim=-1)
            for emotion in EMOTIONS:
                for layer in layers:
                    for alpha in ALPHAS:
                        with steer(model, vecs, emotion, alpha, [layer]):
                            logits = model(batch.tokens)[rows_index, batch.last]
                        logprobs = torch.log_softmax(logits.float(), dim=-1)
                        _ = (base.exp() * (base - logprobs)).sum(-1).mean()
                        out[(emotion, layer, alpha)] = logprobs[:, target_ids].mean(0)
        return out

    def engine() -> dict[tuple[str, int, float], torch.Tensor]:
        rows = sweep(model, vecs, prompts, EMOTIONS, layers, ALPHAS, targets=EMOTIONS, progress=False)
        return {
            (r["emotion"], r["layer"], r["alpha"]): torch.tensor([r["target_logprob"][w] for w in EMOTIONS])
            for r in rows
        }

    timings: dict[str, list[float]] = {"sweep": [], "loop": []}
    results = {}
    for _ in range(repeats):  # interleaved so drift hits both alike
        for label, run in (("sweep", engine), ("loop", loop)):
            started = time.perf_counter()
            results[label] = run()
            timings[label].append(time.perf_counter() - started)
    diff = max(float((results["sweep"][k] - results["loop"][k]).abs().max()) for k in results["loop"])
    sweep_s, loop_s = min(timings["sweep"]), min(timings["loop"])
    cells = len(EMOTIONS) * len(layers) * len(ALPHAS)
    return SweepSpeed(name, cells, len(prompts), round(sweep_s, 2), round(loop_s, 2), round(sweep_s / loop_s, 3), diff)


def bench_generate(name: str, vectors: str | None = None, new_tokens: int = 32, repeats: int = 5) -> GenerateSpeed:
    import torch

    from emolens.steer import steer

    model, vecs = _load(name, vectors)
    tokens = model.to_tokens("The letter arrived on a Tuesday morning, and when she opened it")
    layers = [vecs.default_layer]

    def generate() -> None:
        with torch.inference_mode():
            model.generate(tokens, max_new_tokens=new_tokens, do_sample=False, verbose=False, stop_at_eos=False)

    def steered(positions: str) -> None:
        with steer(model, vecs, "calm", 0.1, layers, positions=positions):
            generate()

    runs = {"plain": generate, "all": lambda: steered("all"), "generated": lambda: steered("generated")}
    timings: dict[str, list[float]] = {k: [] for k in runs}
    generate()  # warm-up
    for _ in range(repeats):
        for label, run in runs.items():
            started = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - started)
    plain, every, generated = (statistics.median(timings[k]) for k in ("plain", "all", "generated"))
    return GenerateSpeed(
        name,
        new_tokens,
        round(plain, 3),
        round(every, 3),
        round(generated, 3),
        round(every / plain, 3),
        round(generated / plain, 3),
    )


@dataclass
class RaySpeed:
    model: str
    executor: str
    workers: int
    cells: int
    prompts: int
    seconds: float
    cells_per_s: float


def bench_ray(name: str, vectors: str | None = None) -> list[RaySpeed]:
    """Cells/s of one sweep (4 emotions x 6 layers x 5 alphas, 16 prompts): in-process, Ray with 1 and 2 workers.

    Ray is started once before timing (a cluster is up before a sweep); each Ray timing
    includes the workers' model loads, which a sweep pays once per worker.
    """
    import ray

    from emolens.corpus import data_path, read_jsonl
    from emolens.sweep import sweep

    model, vecs = _load(name, vectors)
    prompts = [row["text"] for row in read_jsonl(data_path("feels_prompts.jsonl"))][:16]
    n = model.cfg.n_layers
    layers = sorted({round(i * (n - 1) / 5) for i in range(6)})
    cells = len(EMOTIONS) * len(layers) * len(ALPHAS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = []
    try:
        for executor, workers in (("local", 1), ("ray", 1), ("ray", 2)):
            started = time.perf_counter()
            count = workers if executor == "ray" else None
            sweep(model, vecs, prompts, EMOTIONS, layers, ALPHAS, targets=EMOTIONS, executor=executor, workers=count)
            seconds = time.perf_counter() - started
            out.append(
                RaySpeed(name, executor, workers, cells, len(prompts), round(seconds, 1), round(cells / seconds, 2))
            )
    finally:
        ray.shutdown()
    return out
