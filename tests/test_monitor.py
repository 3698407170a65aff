"""The live monitor: readings equal ``vecs.read`` on the final text, tokens equal ``model.generate``, CLI and HTML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import emolens
from emolens import cli, models
from emolens.corpus import load_neutral
from emolens.models import tiny_random_model
from emolens.monitor import TokenReading, monitor, strongest, write_html
from emolens.readout import calibrate
from emolens.vectors import EmotionVectors

PROMPT = "I opened the letter and"


@pytest.fixture(scope="module")
def vecs(ascii_model) -> EmotionVectors:
    """Random unit directions and centre at every layer (the monitor only reads through them)."""
    generator = torch.Generator().manual_seed(0)
    n_layers, d_model = ascii_model.cfg.n_layers, ascii_model.cfg.d_model
    raw = torch.randn(n_layers, 5, d_model, generator=generator)
    return EmotionVectors(
        emotions=["afraid", "calm", "happy", "joyful", "sad"],
        layers=list(range(n_layers)),
        vectors=raw / raw.norm(dim=-1, keepdim=True),
        center=torch.randn(n_layers, d_model, generator=generator),
        resid_norms=torch.ones(n_layers),
        default_layer=1,
    )


@pytest.fixture(scope="module")
def calibrated_vecs(ascii_model, vecs) -> EmotionVectors:
    """The same directions, calibrated on a few neutral texts."""
    copy = dataclasses.replace(vecs)
    calibrate(copy, ascii_model, neutral=load_neutral()[:3])
    return copy


@pytest.fixture(scope="module")
def ascii_model():
    """The tiny random model, its unembedding biased towards printable ASCII bytes.

    Random weights otherwise emit arbitrary bytes, whose UTF-8 decoding would not
    re-tokenize to the same ids; with ASCII the final text tokenizes back exactly.
    """
    model = tiny_random_model(seed=0)
    tokenizer = model.tokenizer
    assert tokenizer is not None
    printable = [len(s) == 1 and 32 <= ord(s) < 127 for s in (tokenizer.decode([i]) for i in range(model.cfg.d_vocab))]
    with torch.no_grad():
        model.unembed.b_U[~torch.tensor(printable)] = -1e4
    return model


@pytest.mark.parametrize("calibrated", [False, True])
def test_readings_equal_vecs_read_on_the_final_text(ascii_model, vecs, calibrated_vecs, calibrated):
    chosen = calibrated_vecs if calibrated else vecs
    for layer in chosen.layers:
        tokens = list(monitor(ascii_model, chosen, PROMPT, max_new_tokens=12, layer=layer, calibrated=calibrated))
        final_text = PROMPT + "".join(t.token for t in tokens if t.generated)
        expected = chosen.read(ascii_model, final_text, layer, calibrated=calibrated)
        assert [t.position for t in tokens] == list(range(expected.shape[0]))
        assert sum(t.generated for t in tokens) == 12
        got = torch.stack([t.readings for t in tokens])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_tokens_equal_plain_greedy_generation(ascii_model, vecs):
    tokens = list(emolens.monitor(ascii_model, vecs, PROMPT, max_new_tokens=10, calibrated=False))
    prompt_ids = torch.tensor([[t.token_id for t in tokens if not t.generated]])
    reference = ascii_model.generate(
        prompt_ids, max_new_tokens=10, do_sample=False, stop_at_eos=False, verbose=False, use_past_kv_cache=True
    )
    assert [t.token_id for t in tokens] == reference[0].tolist()


def test_chosen_emotions_and_top(ascii_model, vecs):
    tokens = list(monitor(ascii_model, vecs, PROMPT, 3, ["sad", "calm"], top=1, include_prompt=False, calibrated=False))
    assert len(tokens) == 3 and all(t.generated for t in tokens)
    for token in tokens:
        assert token.emotions == ("sad", "calm")
        assert token.readings.shape == (2,)
        assert token.top[0][1] == pytest.approx(float(token.readings.max()), abs=1e-4)
    with pytest.raises(ValueError, match="sad"):
        next(monitor(ascii_model, vecs, PROMPT, 3, emotions=["sadd"], calibrated=False))
    with pytest.raises(ValueError, match="layer"):
        next(monitor(ascii_model, vecs, PROMPT, 3, layer=9, calibrated=False))
    with pytest.raises(ValueError, match="calibrat"):
        next(monitor(ascii_model, vecs, PROMPT, 3))


def test_html_escapes_text_and_holds_the_view(tmp_path: Path):
    tokens = [
        TokenReading("<script>", 1, 0, False, torch.tensor([0.5, -0.1]), ("calm", "sad"), (("calm", 0.5),)),
        TokenReading(" &x", 2, 1, True, torch.tensor([0.2, 0.9]), ("calm", "sad"), (("sad", 0.9),)),
    ]
    assert strongest(tokens, 1) == ["sad"]
    page = Path(write_html(tmp_path / "m.html", tokens, ["calm", "sad"])).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "ColoredTokensMulti" in page
    with pytest.raises(ValueError, match="not monitored"):
        write_html(tmp_path / "n.html", tokens, ["happy"])


def test_cli_monitor(tmp_path: Path, monkeypatch, capsys, ascii_model, calibrated_vecs):
    path = calibrated_vecs.save(tmp_path / "vectors.safetensors")
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: ascii_model)
    html = tmp_path / "monitor.html"
    argv = ["monitor", "--vectors", str(path), PROMPT, "--max-new-tokens", "4", "--html", str(html), "--top", "2"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith("   ")]) == 4
    assert lines[-1].startswith("wrote ") and html.exists()
