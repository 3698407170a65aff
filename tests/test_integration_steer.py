"""Steering gemma: "happy" raises logit(" happy") - logit(" sad") after an open prompt; "sad" lowers it."""

from __future__ import annotations

import pytest
import torch

import emolens
from emolens.corpus import load_neutral, load_stories
from emolens.fit import fit_emotion_vectors

pytestmark = pytest.mark.integration

EMOTIONS = ["happy", "sad", "calm", "afraid", "angry", "bored"]
# The middle layer of 18. Measured on these prompts: layers 9, 11 and 14 move the word pair
# the right way at alpha 0.1 and 0.25 on every prompt; layer 6 at 0.25 raised it for "sad"
# too after "Honestly, right now I am", and layer 3 at 0.25 raises it for both emotions.
LAYER = 9
ALPHA = 0.1
PROMPTS = ["Today I feel", "When I woke up this morning, I felt", "Honestly, right now I am"]


@pytest.fixture(scope="module")
def gemma_vectors(gemma):
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    return fit_emotion_vectors(gemma, stories=stories, neutral=load_neutral()[:40], emotions=EMOTIONS, layers=[LAYER])


def happy_minus_sad(model, prompt: str) -> float:
    happy, sad = (model.to_single_token(f" {w}") for w in ("happy", "sad"))
    with torch.inference_mode():
        logits = model(model.to_tokens(prompt))[0, -1]
    return float(logits[happy] - logits[sad])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_steering_happy_and_sad_move_the_next_word(gemma, gemma_vectors, prompt) -> None:
    plain = happy_minus_sad(gemma, prompt)
    with emolens.steer(gemma, gemma_vectors, "happy", ALPHA, layers=[LAYER]):
        up = happy_minus_sad(gemma, prompt)
    with emolens.steer(gemma, gemma_vectors, "sad", ALPHA, layers=[LAYER]):
        down = happy_minus_sad(gemma, prompt)
    assert up > plain > down, (up, plain, down)
    assert happy_minus_sad(gemma, prompt) == plain  # hooks are gone
