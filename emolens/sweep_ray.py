"""The Ray executor of :func:`emolens.sweep`: cells mapped over a Ray cluster (``pip install emolens[ray]``).

Ray schedules; emolens writes no scheduler. Each worker is an actor that loads the model
(``model_factory``) and keeps the vectors once, then runs batches of cells: all cells of
one chunk share a layer, so a worker computes the unsteered pass for that layer once and
reuses it for every later chunk of the same layer. Rows stream back to the driver as
chunks finish (``ActorPool.map_unordered``); the driver alone appends them to the
resumable JSONL file, so resume works exactly as in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from transformer_lens import HookedTransformer

from emolens.sweep import ROW_BUDGET, Cell, CellRunner, SweepSpec
from emolens.vectors import EmotionVectors


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError("executor='ray' needs Ray: pip install 'emolens[ray]'") from None
    return ray


class SweepWorker:
    """One model per worker process; runs chunks of same-layer cells."""

    def __init__(
        self, model_factory: Callable[[], HookedTransformer], vecs: EmotionVectors, spec: SweepSpec, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = CellRunner(model_factory(), vecs, spec)
        self.cached: set[int] = set()

    def run(self, layer: int, cells: list[Cell]) -> list[dict[str, Any]]:
        if layer not in self.cached:
            self.runner.cache_layers(sorted(self.cached | {layer}))
            self.cached.add(layer)
        return self.runner.run_layer(layer, cells)


def chunks(cells: list[Cell], n_prompts: int) -> list[tuple[int, list[Cell]]]:
    """Same-layer groups of at most one batched forward's worth of cells."""
    size = max(1, ROW_BUDGET // max(1, n_prompts))
    out = []
    for layer in sorted({cell.layer for cell in cells}):
        same = [cell for cell in cells if cell.layer == layer]
        out += [(layer, same[i : i + size]) for i in range(0, len(same), size)]
    return out


def run_on_ray(
    model_factory: Callable[[], HookedTransformer],
    vecs: EmotionVectors,
    spec: SweepSpec,
    cells: list[Cell],
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows of ``cells`` as Ray workers finish them (connects to ``address``, or starts Ray locally)."""
    ray = _ray()
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    count = max(1, workers or cpus)
    per_worker = max(1, cpus // count)
    actor = ray.remote(num_cpus=per_worker)(SweepWorker)
    handles = [actor.remote(model_factory, vecs, spec, per_worker) for _ in range(count)]
    pool = ActorPool(handles)
    try:
        for rows in pool.map_unordered(lambda a, job: a.run.remote(*job), chunks(cells, len(spec.prompts))):
            yield from rows
    finally:
        for handle in handles:
            ray.kill(handle)
