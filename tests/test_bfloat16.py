"""The tiny model in bfloat16: fitting and readouts accumulate in float32, steering keeps the model's dtype."""

from __future__ import annotations

import pytest
import torch

import emolens
from emolens.corpus import load_neutral, load_stories
from emolens.fit import fit_emotion_vectors
from emolens.models import tiny_random_model
from emolens.readout import calibrate

EMOTIONS = ["afraid", "calm", "happy"]


@pytest.fixture(scope="module")
def bf16_model():
    return tiny_random_model(dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def bf16_vectors(bf16_model):
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    picked = [s for e in EMOTIONS for s in [x for x in stories if x.emotion == e][:2]]
    return fit_emotion_vectors(
        bf16_model, stories=picked, neutral=load_neutral()[:6], emotions=EMOTIONS, window_start=20
    )


def test_fit_and_readouts_are_float32_and_match_a_float32_model(bf16_model, bf16_vectors) -> None:
    assert bf16_vectors.vectors.dtype == torch.float32 and bf16_vectors.resid_norms.dtype == torch.float32
    assert torch.isfinite(bf16_vectors.vectors).all()
    norms = torch.linalg.vector_norm(bf16_vectors.vectors, dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    texts = [load_neutral()[7], "The kettle clicked off and she poured the water slowly."]
    scores = bf16_vectors.score(bf16_model, texts, calibrated=False)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    # the same weights in float32 read the same texts within bfloat16's resolution
    full = tiny_random_model(dtype=torch.float32)
    full.load_state_dict({k: v.float() for k, v in bf16_model.state_dict().items()})
    reference = bf16_vectors.project(
        full.run_with_cache(full.to_tokens(texts[1]), names_filter="blocks.2.hook_resid_post")[1][
            "blocks.2.hook_resid_post"
        ][0].float(),
        2,
    )
    bf16_tokens = bf16_vectors.read(bf16_model, texts[1], layer=2, calibrated=False)
    scale = reference.abs().max()
    assert (bf16_tokens - reference).abs().max() < 0.05 * scale


def test_calibration_in_bfloat16(bf16_model, bf16_vectors) -> None:
    calibration = calibrate(bf16_vectors, bf16_model, load_neutral()[:6])
    assert calibration.baseline.dtype == torch.float32 and torch.isfinite(calibration.baseline).all()


def test_steering_in_bfloat16_keeps_dtype_and_alpha_zero_is_exact(bf16_model, bf16_vectors) -> None:
    tokens = bf16_model.to_tokens("Nobody answered the door.")
    with torch.inference_mode():
        plain = bf16_model(tokens)
        with emolens.steer(bf16_model, bf16_vectors, "calm", 0.0, layers=[1]):
            zero = bf16_model(tokens)
        with emolens.steer(bf16_model, bf16_vectors, "calm", 0.5, layers=[1]):
            steered = bf16_model(tokens)
    assert plain.dtype == steered.dtype == torch.bfloat16
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, steered) and torch.isfinite(steered).all()
