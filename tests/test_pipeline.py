"""``emolens run`` on the tiny model: stages, resuming, recomputing on changes, refits, failures, the report."""

from __future__ import annotations

import json
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emolens import cli, pipeline
from emolens.report import site


@dataclass
class ToyResult:
    total: float

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "per_layer": [{"layer": 0, "effect": _est(self.total), "control": _est(0.0)}]}


def _est(value: float) -> dict[str, float | int]:
    return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 4}


def _toy_module(name: str, calls: list[str], fail: bool = False) -> types.ModuleType:
    """A registered-experiment stand-in: run/render/headlines, counting its runs."""
    module = types.ModuleType(f"emolens.experiments.{name}", f"{name}: a toy experiment for pipeline tests.")

    def run(model: Any, vecs: Any, profile: str = "cpu", seed: int = 0) -> ToyResult:
        calls.append(name)
        if fail:
            raise RuntimeError("toy failure")
        return ToyResult(total=float(len(vecs.emotions) + seed))

    def render(page: Any, data: dict[str, Any]) -> None:
        page.paragraph(f"total <{data['total']}>")

    module.__file__ = __file__  # its code is this test file
    module.run = run  # type: ignore[attr-defined]
    module.render = render  # type: ignore[attr-defined]
    module.headlines = lambda data: [("toy total", str(data["total"]), "")]  # type: ignore[attr-defined]
    return module


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch, tiny_model) -> list[str]:
    """Registry of two toy experiments ("feels" feeds the form/act figure; "broken" fails); tiny model loads."""
    calls: list[str] = []
    modules = {"feels": _toy_module("feels", calls), "broken": _toy_module("broken", calls, fail=True)}
    for module in modules.values():
        monkeypatch.setitem(sys.modules, module.__name__, module)
    names = ("feels", "broken")
    monkeypatch.setattr(pipeline, "PROFILES", {"quick": names, "cpu": names, "full": names})
    monkeypatch.setattr(pipeline, "load_experiment", modules.__getitem__)
    monkeypatch.setattr(pipeline, "check_experiment", lambda name: modules[name] and name)
    monkeypatch.setattr(site, "load_experiment", modules.__getitem__)
    monkeypatch.setattr(pipeline, "tiny_random_model", lambda seed=0: tiny_model)
    return calls


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    """A run directory holding tiny vectors (fitted once for the module)."""
    out = tmp_path_factory.mktemp("fitted")
    vectors = pipeline.fit_vectors(tiny_model, pipeline.fit_settings(pipeline.TINY))
    vectors.save(out / "vectors.safetensors")
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_run_writes_results_and_report_then_resumes(toy_registry: list[str], fitted_run: Path, tmp_path: Path) -> None:
    out = _copy(fitted_run, tmp_path)
    outcome = pipeline.run_all(pipeline.TINY, out, profile="quick")
    assert toy_registry == ["feels", "broken"]
    assert list(outcome.failures) == ["broken"] and "toy failure" in outcome.failures["broken"]
    assert [s["status"] for s in outcome.stages] == [
        f"reused {out / 'vectors.safetensors'}",
        "computed",
        "computed",
        "failed",
    ]
    feels = json.loads((out / "results" / "feels.json").read_text())
    assert (
        feels["total"] == len(pipeline.TINY_EMOTIONS)
        and feels["_stage"]["profile"] == "quick"
        and len(feels["_stage"]["key"]) == 20
    )
    validation = json.loads((out / "results" / "validation.json").read_text())
    assert [acc["layer"] for acc in validation["per_layer"]] == [0, 1, 2]
    held_out = pipeline.stories_for("validation", pipeline.fit_settings(pipeline.TINY)) or []
    assert validation["n_stories"] == len(held_out) and {s.emotion for s in held_out} == set(pipeline.TINY_EMOTIONS)
    assert not (out / "results" / "broken.json").exists()

    index = (out / "report" / "index.html").read_text()
    assert f"total &lt;{len(pipeline.TINY_EMOTIONS)}.0&gt;" in (out / "report" / "feels.html").read_text()
    assert 'href="validation.html"' in index and 'href="feels.html"' in index and "broken failed" in index
    assert "toy total" in index and "held-out top-1 at default layer" in index
    assert index.count("data:image/png;base64,") == 1  # the form/act figure

    toy_registry.clear()
    again = pipeline.run_all(pipeline.TINY, out, profile="quick")
    assert toy_registry == ["broken"]  # finished stages are skipped; the failed one is retried
    assert [s["status"] for s in again.stages[1:3]] == ["reused", "reused"]

    toy_registry.clear()
    pipeline.run_all(pipeline.TINY, out, profile="quick", seed=1)  # a changed setting recomputes
    assert toy_registry == ["feels", "broken"]
    assert json.loads((out / "results" / "feels.json").read_text())["total"] == len(pipeline.TINY_EMOTIONS) + 1

    toy_registry.clear()
    pipeline.run_all(pipeline.TINY, out, profile="cpu", only=["feels"], seed=1)
    assert toy_registry == ["feels"]  # validation does not depend on the profile and was not asked for


def test_corrupt_or_stale_vectors_are_refitted(fitted_run: Path, tmp_path: Path, tiny_model, capsys) -> None:
    out = _copy(fitted_run, tmp_path)
    (out / "vectors.safetensors").write_bytes(b"not a safetensors file")
    vectors, how = pipeline.fitted_or_fit(tiny_model, pipeline.TINY, out)
    assert how == "fitted" and "unreadable" in capsys.readouterr().out
    assert vectors.metadata["fit_settings"] == pipeline.fit_settings(pipeline.TINY)

    sidecar = out / "vectors.json"
    meta = json.loads(sidecar.read_text())
    meta["metadata"]["fit_settings"]["window_start"] = 5
    sidecar.write_text(json.dumps(meta))
    _, how = pipeline.fitted_or_fit(tiny_model, pipeline.TINY, out)
    assert how == "fitted" and "fit settings" in capsys.readouterr().out
    _, how = pipeline.fitted_or_fit(tiny_model, pipeline.TINY, out)
    assert how.startswith("reused")

    meta = json.loads(sidecar.read_text())
    meta["metadata"]["corpus_sha256"] = "0" * 64
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corpus changed"):
        pipeline.fitted_or_fit(
            tiny_model, pipeline.TINY, tmp_path / "elsewhere", vectors_path=out / "vectors.safetensors"
        )


def test_cli_run_rejects_unknown_names(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["run", "--model", "tiny", "--out", str(tmp_path), "--only", "geometri"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'geometri'; did you mean geometry" in err and err.count("\n") == 1


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "score", "--vectors", str(tmp_path / "none.safetensors"), "--input", "x.txt"])


def test_corpus_validate_lists_every_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    rows = [{"kind": "poem", "text": "short"}, {"kind": "expository", "text": "short too"}]
    bad.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert cli.main(["corpus", "validate", str(bad), str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "line 1:" in err and "line 2:" in err and "missing.jsonl" in err


def test_code_digest_follows_imported_emolens_modules() -> None:
    from emolens import validation

    assert pipeline.code_digest(validation) != pipeline.code_digest(pipeline)
    assert pipeline.code_digest(validation) == pipeline.code_digest(validation)


def test_smaller_profiles_fit_less_and_reuse_the_fit_of_a_larger_one() -> None:
    from emolens.concepts import check_emotion

    quick = pipeline.fit_settings("gemma-3-270m", "quick")
    assert quick["emotions"] == [check_emotion(e) for e in pipeline.QUICK_EMOTIONS]
    cpu, full = pipeline.CPU_FIT_SETTINGS, pipeline.FIT_SETTINGS
    assert pipeline.reusable_settings("gemma-3-270m", "quick") == [quick, cpu, full]
    assert pipeline.reusable_settings("gemma-3-270m", "cpu") == [cpu, full]
    assert pipeline.reusable_settings("gemma-3-270m", "full") == [full]
    assert pipeline.reusable_settings(pipeline.TINY, "quick") == [pipeline.TINY_FIT_SETTINGS]


def test_cpu_fit_takes_the_first_stories_of_every_emotion_and_every_validation_story() -> None:
    from emolens.concepts import emotions
    from emolens.corpus import load_stories

    cpu = pipeline.fit_settings("gemma-3-270m", "cpu")
    train = pipeline.stories_for("train", cpu) or []
    per_emotion = {e: [s.text for s in train if s.emotion == e] for e in emotions()}
    first = {
        e: [s.text for s in load_stories(split="train") if s.emotion == e][: cpu["stories_per_emotion"]]
        for e in emotions()
    }
    assert per_emotion == first
    assert pipeline.stories_for("validation", cpu) == load_stories(split="validation")
