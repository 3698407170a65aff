"""Readouts on the tiny model: window policy, calibration, one string, file format, review fixes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from emolens.corpus import load_neutral, load_stories
from emolens.extract import (
    ReadOptions,
    batches,
    char_span_positions,
    reduce,
    resid_hook,
    run_batches,
    stream_resid,
    text_means,
    window_mask,
)
from emolens.fit import choose_default_layer, fit_emotion_vectors, neutral_subspace
from emolens.models import tiny_random_model
from emolens.readout import (
    ReadingStats,
    ResidBinSums,
    calibrate,
    calibrate_from_sums,
    calibration_texts,
    sentences,
)
from emolens.validation import validate
from emolens.vectors import EmotionVectors


@pytest.fixture(scope="module")
def held_out_neutral() -> list[str]:
    """Neutral sentences of every length from texts the tiny vectors were not calibrated on."""
    pieces = [s for text in load_neutral()[100:110] for s in sentences(text)]
    return [p for p in pieces if len(p) < 60][:6] + [p for p in pieces if len(p) > 150][:6] + load_neutral()[120:123]


@pytest.fixture(scope="module")
def two_emotion_corpus() -> tuple[list, list[str]]:
    stories = [s for s in load_stories(split="train") if s.emotion in ("afraid", "calm")]
    picked = [
        replace(s, text=s.text[:160]) for e in ("afraid", "calm") for s in [x for x in stories if x.emotion == e][:2]
    ]
    return picked, [t[:200] for t in load_neutral()[:3]]


def test_calibration_makes_neutral_text_read_near_zero(tiny_model, tiny_vectors, held_out_neutral) -> None:
    # move the reading origin so that raw readings of every text sit far from zero, then calibrate
    row = tiny_vectors.layer_index(None)
    center = tiny_vectors.center.clone()
    signs = torch.tensor([(-1.0) ** i for i in range(len(tiny_vectors.emotions))])
    offset = 4.0 * signs * tiny_vectors.calibration.scale[row]  # about four neutral spreads on each concept
    center[row] -= torch.linalg.pinv(tiny_vectors.vectors[row]) @ offset
    shifted = replace(tiny_vectors, center=center, calibration=None)
    calibrate(shifted, tiny_model, load_neutral()[:40])
    raw = shifted.score(tiny_model, held_out_neutral, calibrated=False)
    calibrated = shifted.score(tiny_model, held_out_neutral)
    scale = shifted.calibration.scale[row]
    assert (raw / scale).mean(dim=0).abs().mean() > 2.0  # raw: concepts far from zero on neutral text
    # On the texts it was measured on, the calibration removes the offset from every concept.
    in_sample = shifted.score(tiny_model, load_neutral()[:40])
    assert in_sample.mean(dim=0).abs().max() < 0.1
    # Held-out paragraphs: most of the offset is gone. (Sentences cut from other texts keep
    # about half of it on this random byte-level model: early-position readings of neutral
    # paragraphs transfer only in part. How this goes on real models is measured by
    # experiments/calibration.py and written in docs/results.md.)
    paragraphs = slice(12, None)
    assert calibrated[paragraphs].mean(dim=0).abs().max() < 0.3 * raw[paragraphs].mean(dim=0).abs().min()


def test_one_string_is_one_text(tiny_model, tiny_vectors) -> None:
    one = tiny_vectors.score(tiny_model, "The meeting is at 3pm.")
    assert one.shape == (1, len(tiny_vectors.emotions))
    assert torch.equal(one, tiny_vectors.score(tiny_model, ["The meeting is at 3pm."]))


def test_score_is_the_window_mean_of_read(tiny_model, tiny_vectors) -> None:
    texts = ["a short text", "a text long enough to pass the window of twenty counted positions, and then some"]
    scores = tiny_vectors.score(tiny_model, texts)
    for text, row in zip(texts, scores, strict=True):
        per_token = tiny_vectors.read(tiny_model, text)
        assert per_token.shape == (len(tiny_model.to_str_tokens(text)), len(tiny_vectors.emotions))
        (batch,) = batches(tiny_model, [text], window_start=20)
        assert torch.allclose(per_token[batch.window[0]].mean(dim=0), row, atol=1e-5)
    raw = tiny_vectors.score(tiny_model, texts, calibrated=False)
    means = text_means(tiny_model, texts, [tiny_vectors.default_layer], window_start=20)[:, 0]
    assert torch.allclose(raw, tiny_vectors.project(means), atol=1e-5)


@pytest.mark.parametrize("window_start", [1, 4, 20])
def test_window_policy_is_the_same_with_and_without_bos(window_start: int) -> None:
    for n_text in range(1, 30):
        with_bos = window_mask(torch.tensor([n_text + 1]), n_text + 1, window_start, first_text_position=1)[0]
        without = window_mask(torch.tensor([n_text]), n_text, window_start, first_text_position=0)[0]
        assert not with_bos[0]  # the BOS is never read
        assert torch.equal(with_bos[1:], without)  # the same text tokens


def test_model_without_bos_reads_the_same_tokens(tiny_model) -> None:
    no_bos = tiny_random_model(seed=0)
    no_bos.cfg.default_prepend_bos = False
    text = "twelve words or so, enough for a short window to start"
    (with_bos,) = batches(tiny_model, [text], window_start=20)
    (without,) = batches(no_bos, [text], window_start=20)
    assert torch.equal(with_bos.window[0, 1:], without.window[0])
    assert without.lengths.tolist() == [with_bos.lengths.item() - 1]


def test_char_span_positions(tiny_model) -> None:
    text = "I am happy today"
    positions = char_span_positions(tiny_model, text, 5, 10)  # "happy": byte tokens 5..9, after the BOS
    assert positions == [6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="not inside the text"):
        char_span_positions(tiny_model, text, 3, 99)


def test_extra_hooks_change_what_is_read_and_legacy_calls_work(tiny_model) -> None:
    texts = ["one text here", "another, longer text here"]
    options = ReadOptions(layers=[1, 2], window_start=3)
    plain = [resid for _, resid in run_batches(tiny_model, texts, options)]
    legacy = [resid for _, resid in stream_resid(tiny_model, texts, [1, 2], window_start=3)]
    assert all(torch.equal(a, b) for a, b in zip(plain, legacy, strict=True))

    def shift(activation: torch.Tensor, hook: object) -> torch.Tensor:
        return activation + 1.0

    hooked = [resid for _, resid in run_batches(tiny_model, texts, options, hooks=[(resid_hook(1), shift)])]
    for before, after in zip(plain, hooked, strict=True):
        assert torch.allclose(after[0], before[0] + 1.0)  # read after the extra hook at the same layer
        assert not torch.allclose(after[1], before[1])  # and it propagates


def test_calibration_roundtrip_and_old_files(tiny_model, tiny_vectors, tmp_path) -> None:
    path = tiny_vectors.save(tmp_path / "v.safetensors")
    loaded = EmotionVectors.load(path)
    assert loaded.calibration is not None and loaded.calibration.method == tiny_vectors.calibration.method
    assert torch.equal(loaded.calibration.baseline, tiny_vectors.calibration.baseline)
    assert torch.equal(loaded.score(tiny_model, "same text"), tiny_vectors.score(tiny_model, "same text"))
    # a format-1 file (no calibration) still loads; calibrated readouts name the upgrade
    old = replace(tiny_vectors, calibration=None).save(tmp_path / "old.safetensors")
    sidecar = json.loads(old.with_suffix(".json").read_text())
    sidecar["format_version"] = 1
    del sidecar["calibration"]
    old.with_suffix(".json").write_text(json.dumps(sidecar))
    upgraded = EmotionVectors.load(old)
    with pytest.raises(ValueError, match="emolens calibrate"):
        upgraded.score(tiny_model, "text")
    calibrate(upgraded, tiny_model, load_neutral()[:6])
    assert torch.allclose(upgraded.score(tiny_model, "text"), tiny_vectors.score(tiny_model, "text"), atol=1e-4)
    sidecar["format_version"] = 99
    old.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="format version 99"):
        EmotionVectors.load(old)


@pytest.mark.parametrize("method", ["position", "global"])
def test_calibration_from_the_fits_neutral_pass_equals_a_pass_of_its_own(tiny_model, tiny_vectors, method) -> None:
    neutral = load_neutral()[:6]  # what tiny_vectors was fitted and calibrated on
    sums = ResidBinSums(tiny_vectors.layers, tiny_model.cfg.d_model)
    reduce(tiny_model, neutral, ReadOptions(layers=tiny_vectors.layers, window_start=20, token_budget=300), [sums])
    merged = calibrate_from_sums(replace(tiny_vectors, calibration=None), tiny_model, neutral, sums, method)
    separate = calibrate(replace(tiny_vectors, calibration=None), tiny_model, neutral, method=method)
    torch.testing.assert_close(merged.baseline, separate.baseline, atol=1e-5, rtol=1e-5)
    assert merged.settings == separate.settings and torch.equal(merged.scale, separate.scale)
    if method == "position":  # the fit itself took this path
        torch.testing.assert_close(tiny_vectors.calibration.baseline, separate.baseline, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass over neutral text of its own"):
        calibrate_from_sums(tiny_vectors, tiny_model, neutral, sums, "position+scale")
    with pytest.raises(ValueError, match="needs squared readings"):
        ReadingStats.from_resid_sums(tiny_vectors, sums).calibration("global+scale", {})


def test_calibration_texts_split_sentences_and_drop_speakers() -> None:
    texts = calibration_texts(["Person: How do I sort a list?\nAI: Call sorted on it. Done.", "x"], split=True)
    assert texts[:2] == ["Person: How do I sort a list?\nAI: Call sorted on it. Done.", "x"]
    assert texts[2:] == ["How do I sort a list?", "Call sorted on it."]


def test_denoise_variance_zero_removes_nothing() -> None:
    covariance = torch.diag(torch.tensor([5.0, 2.0, 1.0])).unsqueeze(0)
    assert neutral_subspace(covariance, 0.0)[0].shape == (3, 0)
    assert neutral_subspace(covariance, 0.1)[0].shape == (3, 1)


def test_probe_with_two_emotions_and_no_side_effects(tiny_model, two_emotion_corpus) -> None:
    stories, neutral = two_emotion_corpus
    kwargs = {"stories": stories, "neutral": neutral, "emotions": ["afraid", "calm"], "window_start": 8}
    probe = fit_emotion_vectors(tiny_model, method="probe", layers=[0, 2], calibration=None, **kwargs)
    study = fit_emotion_vectors(tiny_model, method="mean_diff", layers=[0, 2], calibration=None, **kwargs)
    assert probe.vectors.shape == (2, 2, tiny_model.cfg.d_model)
    assert torch.allclose(probe.vectors[:, 0], -probe.vectors[:, 1])  # the two rows of a binary probe
    assert torch.allclose(probe.center, study.center)  # the reading origin does not depend on the method
    off = fit_emotion_vectors(tiny_model, method="mean_diff", denoise_variance=0.0, layers=[0, 2], **kwargs)
    raw = fit_emotion_vectors(tiny_model, method="mean_diff_raw", layers=[0, 2], calibration=None, **kwargs)
    assert torch.allclose(off.vectors, raw.vectors, atol=1e-6)  # 0 means off
    # the default layer's rule says what was done
    assert off.default_layer == 0 and "nearest" in off.metadata["default_layer_rule"]  # study's layer 1 not fitted
    assert off.metadata["settings"]["denoise_variance"] == 0.0 and off.metadata["corpus"]["stories"] == 4
    assert len(off.metadata["corpus"]["stories_sha256"]) == 64


def test_default_layer_rule() -> None:
    assert choose_default_layer(18, list(range(18))) == (11, choose_default_layer(18, [11])[1])
    layer, rule = choose_default_layer(18, [0, 1, 2])
    assert layer == 2 and "not fitted" in rule


def test_check_model_checks_the_weights(tiny_vectors) -> None:
    same = tiny_random_model(seed=0)
    tiny_vectors.check_model(same)  # identical weights: fine
    with torch.no_grad():
        same.blocks[0].attn.W_Q.mul_(1.01)
    with pytest.raises(ValueError, match=r"weights differ: blocks\.0\.attn\.W_Q"):
        tiny_vectors.check_model(same)


def test_validation_resamples_emotions_and_chooses_layer_on_training_folds(tiny_model, tiny_vectors) -> None:
    held = [s for s in load_stories(split="validation") if s.emotion in tiny_vectors.emotions]
    held = [replace(s, text=s.text[:200]) for s in held]
    result = validate(tiny_vectors, tiny_model, held)
    assert result.best_layer_top1["n"] == len(tiny_vectors.emotions)  # the unit is the emotion
    assert result.best_layer == tiny_vectors.metadata["layer_selection"]["best_layer"]
    assert "training stories" in result.best_layer_chosen_on and result.readout == "raw"
    untrained = replace(tiny_vectors, metadata={**tiny_vectors.metadata, "layer_selection": None})
    fallback = validate(untrained, tiny_model, held)
    assert "first held-out story" in fallback.best_layer_chosen_on
    assert fallback.best_layer_top1["n"] == len(tiny_vectors.emotions)
