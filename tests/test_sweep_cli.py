"""``emolens sweep`` end to end on the tiny model: JSONL + CSV, and a rerun that recomputes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from emolens import cli, models


def test_sweep_command_writes_jsonl_and_csv_and_resumes(tmp_path: Path, monkeypatch, tiny_model, tiny_vectors, capsys):
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    vectors = tiny_vectors.save(tmp_path / "v.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("She opened the door and felt\nThe bus was late, so he\n")
    grid = ["--emotions", "calm", "sad", "--layers", "0", "2", "--alphas", "-1", "0", "1", "--targets", "calm", "sad"]
    argv = ["sweep", "--vectors", str(vectors), "--prompts", str(prompts), *grid, "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 0
    lines = (tmp_path / "s" / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 12 and {json.loads(line)["n_prompts"] for line in lines} == {2}
    csv = (tmp_path / "s" / "sweep.csv").read_text().splitlines()
    assert csv[0].endswith("logprob:calm,logprob:sad") and len(csv) == 13
    before = (tmp_path / "s" / "sweep.jsonl").read_text()
    assert cli.main(argv) == 0
    assert (tmp_path / "s" / "sweep.jsonl").read_text() == before  # nothing recomputed or duplicated
    assert "12 cells" in capsys.readouterr().out


def test_sweep_command_bad_alpha_is_one_line(tmp_path: Path, monkeypatch, tiny_model, tiny_vectors, capsys):
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    vectors = tiny_vectors.save(tmp_path / "v.safetensors")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    argv = ["sweep", "--vectors", str(vectors), "--prompts", str(prompts), "--emotions", "calm", "--layers", "0",
            "--alphas", "nan", "--out", str(tmp_path / "s")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "finite" in err and "\n" not in err


def test_sweep_command_layer_out_of_range(tmp_path: Path, monkeypatch, tiny_model, tiny_vectors, capsys):
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    vectors = tiny_vectors.save(tmp_path / "v.safetensors")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    argv = ["sweep", "--vectors", str(vectors), "--prompts", str(prompts), "--emotions", "calm", "--layers", "7",
            "--alphas", "1", "--out", str(tmp_path / "s")]  # fmt: skip
    assert cli.main(argv) == 2
    assert "fitted layers are 0..2" in capsys.readouterr().err
