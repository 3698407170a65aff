"""The Ray executor gives the same rows as the in-process one (Ray started locally, 2 CPUs, tiny model)."""

from __future__ import annotations

import functools
import json

import pytest

from emolens.models import tiny_random_model
from emolens.sweep import sweep

ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'emolens[ray]'")

PROMPTS = ["She opened the door and felt", "The bus was late, so he", "It rained all day and I"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows_and_resume(local_ray, tiny_model, tiny_vectors, tmp_path):
    grid = {"emotions": ["calm", "sad"], "layers": [0, 1, 2], "alphas": [-1.0, 0.5], "targets": ["calm", "sad"]}
    local = sweep(tiny_model, tiny_vectors, PROMPTS, progress=False, **grid)
    factory = functools.partial(tiny_random_model, seed=0)
    path = tmp_path / "ray.jsonl"
    distributed = sweep(
        tiny_model,
        tiny_vectors,
        PROMPTS,
        executor="ray",
        workers=2,
        model_factory=factory,
        out=path,
        progress=False,
        **grid,
    )
    assert [row["key"] for row in distributed] == [row["key"] for row in local]
    for a, b in zip(local, distributed, strict=True):
        assert a["target_logprob"] == pytest.approx(b["target_logprob"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)
    lines = path.read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(line)["key"] for line in lines}) == 12
    again = sweep(
        tiny_model, tiny_vectors, PROMPTS, executor="ray", model_factory=factory, out=path, progress=False, **grid
    )
    assert path.read_text().splitlines() == lines  # resumed: nothing recomputed, nothing duplicated
    assert [row["key"] for row in again] == [row["key"] for row in local]


def test_ray_needs_a_factory_for_unpackaged_models(tiny_model, tiny_vectors):
    with pytest.raises(ValueError, match="model_factory"):
        sweep(tiny_model, tiny_vectors, PROMPTS, ["calm"], [0], [1.0], executor="ray", progress=False)
