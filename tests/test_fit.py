"""Extraction and fitting on the tiny model: reference implementation, denoising, padding, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emolens.corpus import load_neutral, load_stories
from emolens.extract import batches, resid_hook, text_means, window_mask
from emolens.fit import fit_emotion_vectors, neutral_subspace, project_out
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "joyful"]
WINDOW = 20


@pytest.fixture(scope="module")
def small_corpus() -> tuple[list, list[str]]:
    stories = [s for s in load_stories(split="train") if s.emotion in EMOTIONS]
    per_emotion = {e: [s for s in stories if s.emotion == e][:3] for e in EMOTIONS}
    neutral = load_neutral()[:8]
    return [s for e in EMOTIONS for s in per_emotion[e]], neutral


@pytest.fixture(scope="module")
def tiny_vectors(tiny_model, small_corpus) -> EmotionVectors:
    stories, neutral = small_corpus
    return fit_emotion_vectors(tiny_model, stories=stories, neutral=neutral, emotions=EMOTIONS, window_start=WINDOW)


def slow_reference_fit(model, stories, neutral, denoise_variance=0.5) -> torch.Tensor:
    """The recipe written the obvious way: one text at a time, full cache, Python loops."""
    n_layers = model.cfg.n_layers

    def window_acts(text: str) -> list[torch.Tensor]:
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens)
        length = tokens.shape[1]
        start = WINDOW if length > WINDOW else length // 2
        return [cache[resid_hook(layer)][0, start:length] for layer in range(n_layers)]

    vectors = []
    neutral_tokens = [torch.cat([window_acts(t)[layer] for t in neutral]) for layer in range(n_layers)]
    for layer in range(n_layers):
        means = []
        for emotion in EMOTIONS:
            story_means = [window_acts(s.text)[layer].mean(dim=0) for s in stories if s.emotion == emotion]
            means.append(torch.stack(story_means).mean(dim=0))
        raw = torch.stack(means) - torch.stack(means).mean(dim=0)
        covariance = torch.cov(neutral_tokens[layer].T.double())
        values, axes = torch.linalg.eigh(covariance)
        order = values.argsort(descending=True)
        values, axes = values[order], axes[:, order]
        k = int((values.cumsum(0) / values.sum() < denoise_variance).sum()) + 1
        basis = axes[:, :k].float()
        denoised = raw - (raw @ basis) @ basis.T
        vectors.append(denoised / denoised.norm(dim=-1, keepdim=True))
    return torch.stack(vectors)


def test_streaming_fit_equals_slow_reference(tiny_model, small_corpus, tiny_vectors) -> None:
    stories, neutral = small_corpus
    with torch.no_grad():
        reference = slow_reference_fit(tiny_model, stories, neutral)
    assert (tiny_vectors.vectors - reference).abs().max().item() < 1e-5


def test_padding_invariance(tiny_model) -> None:
    texts = ["short one", "a much longer text that needs many more byte tokens to encode than the first", "mid size"]
    together = text_means(tiny_model, texts, window_start=3)
    alone = torch.stack([text_means(tiny_model, [t], window_start=3)[0] for t in texts])
    assert (together - alone).abs().max().item() < 1e-5
    plan = batches(tiny_model, texts, window_start=3, token_budget=10_000)
    assert len(plan) == 1 and plan[0].tokens.shape[0] == 3  # really one padded batch


def test_window_falls_back_to_second_half() -> None:
    mask = window_mask(torch.tensor([10, 3]), 10, window_start=4)
    assert mask[0].tolist() == [False] * 4 + [True] * 6
    assert mask[1].tolist() == [False, True, True] + [False] * 7


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95))
def test_denoising_removes_neutral_subspace(seed: int, fraction: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(200, 16, generator=generator) * torch.linspace(5, 0.1, 16)
    covariance = torch.cov(data.T).unsqueeze(0)
    (basis,) = neutral_subspace(covariance, fraction)
    vectors = torch.randn(1, 7, 16, generator=generator)
    cleaned = project_out(vectors, [basis])
    assert (cleaned[0] @ basis).abs().max().item() < 1e-4  # nothing left along the removed axes
    eigenvalues = torch.linalg.eigvalsh(covariance[0].double()).flip(0)
    explained = eigenvalues[: basis.shape[1]].sum() / eigenvalues.sum()
    assert explained >= fraction - 1e-6
    if basis.shape[1] > 1:  # and the smallest such set
        assert eigenvalues[: basis.shape[1] - 1].sum() / eigenvalues.sum() < fraction


def test_vectors_are_unit_and_save_load_roundtrip(tiny_vectors, tmp_path) -> None:
    assert torch.allclose(tiny_vectors.vectors.norm(dim=-1), torch.ones(3, 3), atol=1e-5)
    path = tiny_vectors.save(tmp_path / "v.safetensors")
    loaded = EmotionVectors.load(path)
    assert torch.equal(loaded.vectors, tiny_vectors.vectors) and loaded.emotions == EMOTIONS
    assert loaded.metadata["model"] == tiny_vectors.metadata["model"]


def test_score_and_read_shapes_and_consistency(tiny_model, tiny_vectors) -> None:
    scores = tiny_vectors.score(tiny_model, ["one text", "another text here"])
    assert scores.shape == (2, 3)
    per_token = tiny_vectors.read(tiny_model, "one text")
    assert per_token.shape == (len(tiny_model.to_str_tokens("one text")), 3)
    (batch,) = batches(tiny_model, ["one text"], window_start=WINDOW)  # short: its second half, never the BOS
    assert not batch.window[0, 0] and torch.allclose(per_token[batch.window[0]].mean(dim=0), scores[0], atol=1e-5)


def test_unknown_emotion_names_closest(tiny_vectors) -> None:
    with pytest.raises(ValueError, match="closest: calm"):
        tiny_vectors.direction("clam")


def test_layer_out_of_range(tiny_model, tiny_vectors) -> None:
    with pytest.raises(ValueError, match=r"layers 0\.\.2"):
        fit_emotion_vectors(tiny_model, layers=[7])
    with pytest.raises(ValueError, match="was not fitted"):
        tiny_vectors.resid_norm(12)


def test_empty_and_short_corpus(tiny_model, small_corpus) -> None:
    stories, neutral = small_corpus
    with pytest.raises(ValueError, match="corpus too small"):
        fit_emotion_vectors(tiny_model, stories=stories[:1], neutral=neutral, emotions=EMOTIONS)
    with pytest.raises(ValueError, match="empty neutral corpus"):
        fit_emotion_vectors(tiny_model, stories=stories, neutral=[], emotions=EMOTIONS)


def test_vectors_refuse_another_model(tiny_vectors) -> None:
    from emolens.models import tiny_random_model

    other = tiny_random_model(seed=1, d_model=32)
    with pytest.raises(ValueError, match="fitted on another model"):
        tiny_vectors.score(other, ["text"])


def test_corrupt_vectors_file(tiny_vectors, tmp_path) -> None:
    path = tiny_vectors.save(tmp_path / "v.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt vectors file"):
        EmotionVectors.load(path)


def test_vectors_file_pair_is_checked(tiny_vectors, tmp_path) -> None:
    """A .json target, tensors beside another save's sidecar, and missing tensors are each one clear error."""
    from dataclasses import replace

    from safetensors.torch import save_file

    with pytest.raises(ValueError, match=r"save to a \.safetensors path"):
        tiny_vectors.save(tmp_path / "v.json")
    assert not (tmp_path / "v.json").exists()
    path = tiny_vectors.save(tmp_path / "v.safetensors")
    old_sidecar = path.with_suffix(".json").read_text()
    replace(tiny_vectors, resid_norms=tiny_vectors.resid_norms * 2).save(path)
    path.with_suffix(".json").write_text(old_sidecar)  # as if a crash came between the two writes
    with pytest.raises(ValueError, match="from different saves"):
        EmotionVectors.load(path)
    tiny_vectors.save(path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    del sidecar["tensors_sha256"]  # a file written by hand, without the hash
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    save_file({"vectors": tiny_vectors.vectors.contiguous()}, str(path))
    with pytest.raises(ValueError, match="lacks center, resid_norms"):
        EmotionVectors.load(path)


def test_shape_checking_is_active() -> None:
    """A float mask is fine for the arithmetic; only the runtime jaxtyping check rejects it."""
    from jaxtyping import TypeCheckError

    from emolens.extract import masked_means

    with pytest.raises(TypeCheckError):
        masked_means(torch.zeros(2, 3, 4, 5), torch.ones(3, 4))


def test_masked_means_equal_the_loop_over_texts_and_layers() -> None:
    from emolens.extract import masked_means

    resid = torch.randn(3, 4, 6, 5)  # layer batch pos d_model
    window = torch.rand(4, 6) > 0.4
    window[2] = False  # a text with no window position has mean 0, not NaN
    expected = torch.zeros(4, 3, 5)
    for text in range(4):
        for layer in range(3):
            if window[text].any():
                expected[text, layer] = resid[layer, text, window[text]].mean(dim=0)
    torch.testing.assert_close(masked_means(resid, window), expected)


def test_reused_read_buffer_gives_what_fresh_batches_give(tiny_model) -> None:
    from emolens.extract import ReadOptions, run_batches

    texts = [" ".join(f"w{10 + i + j}" for j in range(12)) for i in range(9)]  # equal lengths, 2 per batch
    options = ReadOptions(layers=[0, 2], window_start=0, token_budget=100)
    fresh = list(run_batches(tiny_model, texts, options))  # kept across batches: each its own tensor
    reused, addresses = [], set()
    for _, resid in run_batches(tiny_model, texts, options, reuse_buffer=True):
        addresses.add(resid.data_ptr())
        reused.append(resid.clone())
    assert len(fresh) == 5 and len(addresses) == 1  # the first batch is the largest: one buffer for all
    for (batch, kept), copied in zip(fresh, reused, strict=True):
        torch.testing.assert_close(kept, copied, rtol=0, atol=0)
        expected = torch.stack([tiny_model.run_with_cache(batch.tokens)[1][resid_hook(layer)] for layer in (0, 2)])
        torch.testing.assert_close(kept, expected)
