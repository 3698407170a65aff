"""``EmotionVectors``: one unit direction per emotion per layer, and how to use one.

Raw projections centre the residual stream on the mean over emotions of the training
story means (``center``), then project onto the unit vectors. ``score`` and ``read``
go through :mod:`emolens.readout` (one window policy, calibrated against neutral text
by default). Fitting lives in :mod:`emolens.fit`; this module holds the result and its
files (``.safetensors`` tensors + ``.json`` sidecar, written atomically). Format 2 adds
the calibration; format-1 files load without one (``emolens calibrate`` adds it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor
from transformer_lens import HookedTransformer

from emolens.concepts import check_emotion
from emolens.files import atomic_write, atomic_write_text
from emolens.models import model_identity
from emolens.readout import Calibration

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FINGERPRINT_TOLERANCE = 1e-4  # relative; identical weights agree to float32 rounding


@dataclass
class EmotionVectors:
    """Fitted emotion directions for one model.

    ``vectors[i, j]`` is the unit direction of ``emotions[j]`` at ``layers[i]``;
    ``center[i]`` the reading origin and ``resid_norms[i]`` the mean residual norm on
    neutral text at ``layers[i]`` (the unit of steering strength); ``calibration`` what
    neutral text reads (``None`` until :func:`emolens.readout.calibrate` measured it).
    """

    emotions: list[str]
    layers: list[int]
    vectors: Float[Tensor, "layer emotion d_model"]
    center: Float[Tensor, "layer d_model"]
    resid_norms: Float[Tensor, " layer"]
    default_layer: int
    metadata: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None

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
        """Raise if these vectors were fitted on another model, or on other (differently processed) weights.

        The declared identity must match, and so must a fingerprint of a few weights
        recorded at fit time (so weights processed differently, or edited, are caught).
        """
        fitted = self.metadata.get("model", {})
        current = model_identity(model)
        keys = ("model_name", "gguf_sha256", "d_model", "n_layers", "normalization_type", "weight_processing")
        diffs = [k for k in keys if k in fitted and fitted[k] != current.get(k)]
        if diffs:
            detail = ", ".join(f"{k}: fitted {fitted[k]!r} vs model {current.get(k)!r}" for k in diffs)
            raise ValueError(f"vectors were fitted on another model ({detail}); refit with `emolens fit` on this one")
        recorded = self.metadata.get("weight_fingerprint")
        if recorded:
            changed = fingerprint_mismatch(recorded, weight_fingerprint(model))
            if changed:
                raise ValueError(
                    f"vectors were fitted on another model (weights differ: {changed}); "
                    "refit with `emolens fit` on this one"
                )

    def project(
        self, resid: Float[Tensor, "*batch d_model"], layer: int | None = None
    ) -> Float[Tensor, "*batch emotion"]:
        """Raw (uncalibrated) centred projection of residual-stream vectors onto every emotion direction."""
        row = self.layer_index(layer)
        vectors = self.vectors[row].to(resid.device, resid.dtype)
        centred = resid - self.center[row].to(resid.device, resid.dtype)
        return einops.einsum(centred, vectors, "... d, emotion d -> ... emotion")

    def score(
        self,
        model: HookedTransformer,
        texts: str | Sequence[str],
        layer: int | None = None,
        window_start: int | None = None,
        calibrated: bool = True,
    ) -> Float[Tensor, "text emotion"]:
        """Window-mean reading of each text (one string is one text); see :mod:`emolens.readout`."""
        from emolens.readout import score

        return score(self, model, texts, layer, calibrated, window_start)

    def read(
        self, model: HookedTransformer, text: str, layer: int | None = None, calibrated: bool = True
    ) -> Float[Tensor, "pos emotion"]:
        """Per-token readings of ``text``, BOS row included (positions as in ``model.to_str_tokens``)."""
        from emolens.readout import read

        return read(self, model, text, layer, calibrated)

    # ----- files ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the tensor path.

        The sidecar records the SHA-256 of the tensor bytes, so a crash between the two
        writes (new tensors beside an old sidecar) is caught by :meth:`load`.
        """
        target = Path(path)
        if target.suffix == ".json":
            raise ValueError(f"{target}: save to a .safetensors path; the .json sidecar is written beside it")
        tensors = {"vectors": self.vectors, "center": self.center, "resid_norms": self.resid_norms}
        sidecar: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "emotions": self.emotions,
            "layers": self.layers,
            "default_layer": self.default_layer,
            "metadata": self.metadata,
            "calibration": None,
        }
        if self.calibration is not None:
            tensors["calibration_baseline"] = self.calibration.baseline
            tensors["calibration_scale"] = self.calibration.scale
            sidecar["calibration"] = {
                "method": self.calibration.method,
                "bin_starts": self.calibration.bin_starts,
                "settings": self.calibration.settings,
            }
        payload = save({k: v.contiguous().cpu() for k, v in tensors.items()})
        sidecar["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(payload))
        atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=1))
        return target

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read vectors written by :meth:`save`; a corrupt or mismatched file is a clear error."""
        target = Path(path)
        sidecar_path = target.with_suffix(".json")
        if not target.exists() or not sidecar_path.exists():
            raise FileNotFoundError(f"{target} and its sidecar {sidecar_path.name} are both needed; run `emolens fit`")
        if target.suffix == ".json":
            raise ValueError(f"{target}: load the .safetensors file; its .json sidecar is read beside it")
        try:
            payload = target.read_bytes()
            tensors = load(payload)
            sidecar = json.loads(sidecar_path.read_text())
        except (SafetensorError, json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{target}: corrupt vectors file ({err}); refit with `emolens fit`") from None
        recorded = sidecar.get("tensors_sha256")
        if recorded is not None and recorded != hashlib.sha256(payload).hexdigest():
            raise ValueError(
                f"{target}: tensors and sidecar {sidecar_path.name} are from different saves; refit with `emolens fit`"
            )
        missing = [k for k in ("vectors", "center", "resid_norms") if k not in tensors]
        missing += [k for k in ("emotions", "layers", "default_layer", "metadata") if k not in sidecar]
        if missing:
            raise ValueError(f"{target}: vectors file lacks {', '.join(missing)}; refit with `emolens fit`")
        version = sidecar.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{target}: format version {version}, this emolens reads {READABLE_VERSIONS}; refit with `emolens fit`"
            )
        calibration = None
        if sidecar.get("calibration"):
            spec = sidecar["calibration"]
            try:
                calibration = Calibration(
                    method=spec["method"],
                    bin_starts=[int(b) for b in spec["bin_starts"]],
                    baseline=tensors["calibration_baseline"],
                    scale=tensors["calibration_scale"],
                    settings=spec.get("settings", {}),
                )
            except KeyError as err:
                raise ValueError(f"{target}: calibration is incomplete ({err}); run `emolens calibrate`") from None
        return cls(
            emotions=list(sidecar["emotions"]),
            layers=[int(x) for x in sidecar["layers"]],
            vectors=tensors["vectors"],
            center=tensors["center"],
            resid_norms=tensors["resid_norms"],
            default_layer=int(sidecar["default_layer"]),
            metadata=sidecar["metadata"],
            calibration=calibration,
        )


def weight_fingerprint(model: HookedTransformer) -> dict[str, list[float]]:
    """A few statistics of a few weights: mean, RMS, the mean over the vocabulary of W_U's first column.

    Enough to tell apart other weights, edited weights and other weight processing
    (folded layer norms, centred unembedding change these numbers). Computed once per
    model and kept on it while those weights stay the same tensors, unmodified (their
    storage and in-place version counters are the cache key): the statistics read both
    vocabulary-sized matrices (about 1 s on gemma), and every ``steer``/``score`` checks them.
    """
    params = dict(model.named_parameters())
    last = model.cfg.n_layers - 1
    names = ["embed.W_E", "unembed.W_U", "blocks.0.attn.W_Q", f"blocks.{last}.mlp.W_out", f"blocks.{last}.ln2.w"]
    present = [name for name in names if name in params]
    key = tuple((name, params[name].data_ptr(), params[name]._version) for name in present)
    cached = getattr(model, "_emolens_fingerprint", None)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    out = {}
    for name in present:
        weight = params[name].detach().float().contiguous()  # sums in logical order, whatever the storage
        out[name] = [
            float(weight.mean()),
            float(torch.linalg.vector_norm(weight)) / weight.numel() ** 0.5,
            float(weight.flatten()[:4].sum()),
        ]
    out["W_U.mean_over_vocab"] = [float(model.W_U.detach().float().contiguous().mean(dim=-1).abs().max())]
    model._emolens_fingerprint = (key, out)  # type: ignore[assignment]
    return dict(out)


def fingerprint_mismatch(recorded: dict[str, list[float]], current: dict[str, list[float]]) -> str:
    """Names of the weights whose fingerprint differs ('' when all agree)."""
    changed = []
    for name, values in recorded.items():
        now = current.get(name)
        if now is None or not torch.allclose(
            torch.tensor(values), torch.tensor(now), rtol=FINGERPRINT_TOLERANCE, atol=1e-7
        ):
            changed.append(name)
    return ", ".join(changed)


def default_layer_for(n_layers: int) -> int:
    """The study's rule: the block about two-thirds of the way through the model."""
    return max(0, round(2 * n_layers / 3) - 1)
