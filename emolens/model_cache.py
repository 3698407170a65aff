"""The converted-weight cache: a converted model's state dict, config and tokenizer on disk.

One entry per (model, GGUF sha256, settings, library versions), under ``$EMOLENS_CACHE``
(default ``~/.cache/emolens``). An entry is a directory holding ``state.safetensors``,
``config.json``, ``tokenizer/`` and, written last, ``manifest.json`` with the sha256, size
and mtime of every file. A file whose size and mtime are unchanged is trusted (this keeps
a warm load fast); any other file is re-hashed. Entries are written to a temporary
directory and renamed into place, so a crash never leaves a half-written entry; an entry
whose files do not match its manifest is rebuilt with a warning. This module stores and checks files only; building the
HookedTransformer stays in :mod:`emolens.models`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

CACHE_FORMAT = 1
_SPECIAL_TOKENS = "emolens_special_tokens.json"
_VERSIONED = ("torch", "transformers", "transformer-lens", "gguf")


def cache_root() -> Path:
    """``$EMOLENS_CACHE`` or ``~/.cache/emolens``, created if missing."""
    root = Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


class CacheEntry:
    """The cache entry of one converted model (see module docstring)."""

    def __init__(self, name: str, gguf_sha256: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.gguf_sha256 = gguf_sha256
        versions = {pkg: importlib.metadata.version(pkg) for pkg in _VERSIONED}
        self.key = {"format": CACHE_FORMAT, "gguf_sha256": gguf_sha256, "settings": settings, "versions": versions}
        key_digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = cache_root() / f"{name}-{key_digest}"

    def is_valid(self) -> bool:
        """True when the entry exists and every file matches its manifest; warns when corrupt."""
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            return False
        try:
            manifest = json.loads(manifest_path.read_text())
            ok = manifest["key"] == self.key and all(
                _file_matches(self.path / rel, record) for rel, record in manifest["files"].items()
            )
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            warnings.warn(f"emolens cache entry {self.path} is corrupt or stale; rebuilding it", stacklevel=3)
        return ok

    def load(self, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, torch.Tensor], PreTrainedTokenizerBase]:
        """(config dict, state dict, tokenizer) of a valid entry."""
        config = _config_from_json(json.loads((self.path / "config.json").read_text()), dtype)
        state = load_file(str(self.path / "state.safetensors"))
        special = json.loads((self.path / "tokenizer" / _SPECIAL_TOKENS).read_text())
        # Built straight from tokenizer.json: AutoTokenizer would parse it in Python and
        # deep-copy it, tripling a warm load for Gemma's 262k-token vocabulary.
        tokenizer_dir = self.path / "tokenizer"
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_dir / "tokenizer.json"), name_or_path=str(tokenizer_dir), **special
        )
        return config, state, tokenizer

    def save(self, config: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> None:
        """Write the entry atomically (temporary directory, then rename)."""
        staging = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=self.path.parent))
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(staging / "state.safetensors"))
            (staging / "config.json").write_text(json.dumps(_config_to_json(config), indent=1, sort_keys=True))
            tokenizer.save_pretrained(str(staging / "tokenizer"))
            (staging / "tokenizer" / _SPECIAL_TOKENS).write_text(json.dumps(_special_tokens(tokenizer), indent=1))
            files = {str(p.relative_to(staging)): _file_record(p) for p in sorted(staging.rglob("*")) if p.is_file()}
            (staging / "manifest.json").write_text(json.dumps({"key": self.key, "files": files}, indent=1))
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(staging, self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def with_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """A copy of ``tokenizer`` built with ``add_bos_token=True``, reloaded from plain files.

        TransformerLens wants such a tokenizer; building it here (rather than letting
        TransformerLens reload the GGUF-backed original) keeps cold and warm loads identical.
        """
        with tempfile.TemporaryDirectory(prefix="emolens-tok-") as tmp:
            tokenizer.save_pretrained(tmp)
            return AutoTokenizer.from_pretrained(tmp, add_bos_token=True)


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"sha256": file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _file_matches(path: Path, record: dict[str, Any]) -> bool:
    """Unchanged size and mtime are trusted; otherwise the content hash decides."""
    stat = path.stat()
    if stat.st_size == record["size"] and stat.st_mtime_ns == record["mtime_ns"]:
        return True
    return stat.st_size == record["size"] and file_sha256(path) == record["sha256"]


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    special: dict[str, Any] = {name: getattr(tokenizer, name) for name in names if getattr(tokenizer, name)}
    special["add_bos_token"] = True
    special["padding_side"] = tokenizer.padding_side
    if getattr(tokenizer, "chat_template", None):
        special["chat_template"] = tokenizer.chat_template
    return special


def _config_to_json(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("device", "dtype"):
            continue
        if value is None or isinstance(value, (bool, int, float, str, list, dict)):
            out[key] = value
    return out


def _config_from_json(config: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return {**config, "dtype": dtype, "device": "cpu"}
