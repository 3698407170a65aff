"""``EmotionVectors``: one unit direction per emotion per layer, and how to use one.

Readouts centre the residual stream on the mean over emotions of the training story
means (``center``), then project onto the unit vectors: a text with no particular
emotion scores near zero on every concept, and scores are comparable across concepts.
Fitting lives in :mod:`emolens.fit`; this module holds the result, its readouts and
its files (``.safetensors`` tensors + ``.json`` sidecar, written atomically).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import check_emotion
from emolens.extract import batches, resid_hook, text_means
from emolens.files import atomic_write, atomic_write_text
from emolens.models import model_identity

FORMAT_VERSION = 1


@dataclass
class EmotionVectors:
    """Fitted emotion directions for one model.

    ``vectors[i, j]`` is the unit direction of ``emotions[j]`` at ``layers[i]``;
    ``center[i]`` the reading origin and ``resid_norms[i]`` the mean residual norm on
    neutral text at ``layers[i]`` (the unit of steering strength).
    """

    emotions: list[str]
    layers: list[int]
    vectors: Float[Tensor, "layer emotion d_model"]
    center: Float[Tensor, "layer d_model"]
    resid_norms: Float[Tensor, " layer"]
    default_layer: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_layers, n_emotions, _ = self.vectors.shape
        if n_layers != len(self.layers) or n_emotions != len(self.emotions):
            raise ValueError(
                f"vectors shape {tuple(self.vectors.shape)} does not match "
                f"{len(self.layers)} layers x {len(self.emotions)} emotions"
            )
        if self.default_layer not in self.layers:
            raise ValueError(f"default_layer {self.default_layer} is not one of the fitted layers {self.layers}")

    # ----- lookups -------------------------------------------------------------------
    def layer_index(self, layer: int | None) -> int:
        """Row of ``layer`` (default: ``default_layer``) in the layer axis."""
        chosen = self.default_layer if layer is None else int(layer)
        if chosen not in self.layers:
            raise ValueError(f"layer {chosen} was not fitted; fitted layers are {self.layers[0]}..{self.layers[-1]}")
        return self.layers.index(chosen)

    def direction(self, emotion: str, layer: int | None = None) -> Float[Tensor, " d_model"]:
        """Unit direction of ``emotion`` at ``layer``."""
        column = self.emotions.index(check_emotion(emotion, self.emotions))
        return self.vectors[self.layer_index(layer), column]

    def resid_norm(self, layer: int | None = None) -> float:
        """Mean residual-stream norm at ``layer`` on neutral text: steering alpha is in these units."""
        return float(self.resid_norms[self.layer_index(layer)])

    # ----- readouts ------------------------------------------------------------------
    def check_model(self, model: HookedTransformer) -> None:
        """Raise if these vectors were fitted on a different model or weight processing."""
        fitted = self.metadata.get("model", {})
        current = model_identity(model)
        keys = ("model_name", "gguf_sha256", "d_model", "n_layers", "normalization_type", "weight_processing")
        diffs = [k for k in keys if k in fitted and fitted[k] != current.get(k)]
        if diffs:
            detail = ", ".join(f"{k}: fitted {fitted[k]!r} vs model {current.get(k)!r}" for k in diffs)
            raise ValueError(f"vectors were fitted on another model ({detail}); refit with `emolens fit` on this one")

    def project(
        self, resid: Float[Tensor, "*batch d_model"], layer: int | None = None
    ) -> Float[Tensor, "*batch emotion"]:
        """Centred projection of residual-stream vectors onto every emotion direction."""
        row = self.layer_index(layer)
        vectors = self.vectors[row].to(resid.device, resid.dtype)
        centred = resid - self.center[row].to(resid.device, resid.dtype)
        return einops.einsum(centred, vectors, "... d, emotion d -> ... emotion")

    def score(
        self,
        model: HookedTransformer,
        texts: Sequence[str],
        layer: int | None = None,
        window_start: int | None = None,
    ) -> Float[Tensor, "text emotion"]:
        """Mean projection over each text's own tokens: from ``window_start`` (default: after BOS)."""
        self.check_model(model)
        chosen = self.layers[self.layer_index(layer)]
        start = (1 if model.cfg.default_prepend_bos else 0) if window_start is None else window_start
        means = text_means(model, list(texts), [chosen], window_start=start)
        return self.project(means[:, 0], chosen)

    def read(self, model: HookedTransformer, text: str, layer: int | None = None) -> Float[Tensor, "pos emotion"]:
        """Per-token readings of ``text``, BOS included (positions as in ``model.to_str_tokens``)."""
        self.check_model(model)
        chosen = self.layers[self.layer_index(layer)]
        (batch,) = batches(model, [text])
        with torch.inference_mode():
            _, cache = model.run_with_cache(
                batch.tokens.to(model.cfg.device),
                names_filter=lambda name: name == resid_hook(chosen),
                stop_at_layer=chosen + 1,
            )
        return self.project(cache[resid_hook(chosen)][0].float(), chosen).cpu()

    # ----- files ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the tensor path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"vectors": self.vectors, "center": self.center, "resid_norms": self.resid_norms}
        sidecar = {
            "format_version": FORMAT_VERSION,
            "emotions": self.emotions,
            "layers": self.layers,
            "default_layer": self.default_layer,
            "metadata": self.metadata,
        }
        atomic_write(target, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp))
        atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=1))
        return target

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read vectors written by :meth:`save`; a corrupt or mismatched file is a clear error."""
        target = Path(path)
        sidecar_path = target.with_suffix(".json")
        if not target.exists() or not sidecar_path.exists():
            raise FileNotFoundError(f"{target} and its sidecar {sidecar_path.name} are both needed; run `emolens fit`")
        try:
            tensors = load_file(str(target))
            sidecar = json.loads(sidecar_path.read_text())
        except (SafetensorError, json.JSONDecodeError, OSError) as err:
            raise ValueError(f"{target}: corrupt vectors file ({err}); refit with `emolens fit`") from None
        if sidecar.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{target}: format version {sidecar.get('format_version')}, expected {FORMAT_VERSION}")
        return cls(
            emotions=list(sidecar["emotions"]),
            layers=[int(x) for x in sidecar["layers"]],
            vectors=tensors["vectors"],
            center=tensors["center"],
            resid_norms=tensors["resid_norms"],
            default_layer=int(sidecar["default_layer"]),
            metadata=sidecar["metadata"],
        )


def default_layer_for(n_layers: int) -> int:
    """The study's rule: the block about two-thirds of the way through the model."""
    return max(0, round(2 * n_layers / 3) - 1)
