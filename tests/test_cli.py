"""The command line, end to end on the tiny model where a model is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emolens import cli, models
from emolens.corpus import data_path
from emolens.corpus_generate import generate_stories


def test_corpus_validate_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["corpus", "validate", str(data_path("stories.jsonl")), str(data_path("neutral.jsonl"))]) == 0
    assert "OK (2052 rows)" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["score", "--vectors", str(tmp_path / "none.safetensors"), "--input", "x.txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emolens: error:") and "\n" not in err and "emolens fit" in err


def test_generate_end_to_end_with_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_model
) -> None:
    result = generate_stories(tiny_model, ["calm"], n_topics=2, attempts=1, max_new_tokens=16, seed=1)
    assert len(result.accepted) + len(result.rejected) == 2
    assert all(row["problems"] for row in result.rejected)  # nonsense text is rejected, with reasons

    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    out = tmp_path / "gen.jsonl"
    argv = ["corpus", "generate", "--emotions", "calm", "--topics", "2", "--max-new-tokens", "16", "--out", str(out)]
    assert cli.main(argv) == 0
    rejected = [json.loads(line) for line in out.with_suffix(".rejected.jsonl").read_text().splitlines()]
    assert out.exists() and len(rejected) + len(out.read_text().splitlines()) == 2
    assert "stories" in capsys.readouterr().out
