"""Layer x strength (x emotion x intervention) grids of steering and ablation, resumable.

One row per (emotion, layer, alpha) cell: the mean log-probability of each target word
(``" word"``'s first token) at each prompt's last token, and the mean
KL(unsteered || steered) of the next-token distribution there (names fixed by the API
contract in DESIGN.md).

Why it is faster than the obvious loop ``with steer(...): model(tokens)`` per cell,
with the same numbers (tested against it):

- the unsteered pass runs once and keeps ``resid_post`` at every swept layer; a cell
  at layer L adds its intervention there and runs only blocks L+1.. on
  (``start_at_layer``), so everything below L is shared by all cells at L;
- many cells share one batched forward (cells x prompts rows, under a row budget);
- only each prompt's last position is normalised and unembedded, never the whole
  sequence.

``out``: each finished cell is appended to a JSONL file (fsynced), keyed by a hash of
everything that determines it (model identity, vectors, prompts, targets,
intervention, positions, control, seed, emotion, layer, alpha). A rerun recomputes
only missing cells, and a changed setting never reuses a stale row.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap

from emolens.concepts import check_emotion
from emolens.extract import resid_hook, tokenize
from emolens.files import atomic_write_text
from emolens.jsonl_store import JsonlStore, row_key
from emolens.models import model_identity
from emolens.steer import ablation_basis, check_alpha, check_control, intervention_layers, project_out, steering_vector
from emolens.vectors import EmotionVectors

SWEEP_VERSION = 1
INTERVENTIONS = ("steer", "ablate")
SWEEP_POSITIONS = ("all", "last")
EXECUTORS = ("local", "ray")
ROW_BUDGET = 256  # rows (cells x prompts) per batched forward and unembedding (256 MiB of gemma log-probs)


@dataclass(frozen=True)
class Cell:
    emotion: str
    layer: int
    alpha: float
    key: str


@dataclass
class PromptBatch:
    """Right-padded prompts and where each one ends."""

    tokens: Int[Tensor, "prompt pos"]
    lengths: Int[Tensor, " prompt"]

    @property
    def last(self) -> Int[Tensor, " prompt"]:
        return self.lengths - 1


def prompt_batch(model: HookedTransformer, prompts: Sequence[str]) -> PromptBatch:
    """Tokenize (BOS as the model expects) and right-pad; no attention mask is needed under causal attention."""
    ids = tokenize(model, list(prompts))
    assert model.tokenizer is not None
    pad = int(model.tokenizer.pad_token_id or 0)
    longest = max(len(row) for row in ids)
    tokens = torch.full((len(ids), longest), pad, dtype=torch.long)
    for row, text_ids in enumerate(ids):
        tokens[row, : len(text_ids)] = torch.tensor(text_ids)
    return PromptBatch(tokens, torch.tensor([len(row) for row in ids]))


def target_token_ids(model: HookedTransformer, words: Sequence[str]) -> list[int]:
    """First token id of ``" word"`` for each target word."""
    assert model.tokenizer is not None
    out = []
    for word in words:
        ids = model.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target word {word!r} tokenizes to nothing")
        out.append(int(ids[0]))
    return out


def next_token_logprobs(
    model: HookedTransformer, final_resid: Float[Tensor, "row d_model"]
) -> Float[Tensor, "row vocab"]:
    """Log-softmax of the logits of final-layer residual vectors (ln_final, unembed, softcap)."""
    normed = model.ln_final(einops.rearrange(final_resid, "row d -> row 1 d"))
    logits = apply_softcap(model.unembed(normed), model.cfg.output_logits_soft_cap)
    return torch.log_softmax(logits[:, 0].float(), dim=-1)


def vectors_fingerprint(vecs: EmotionVectors) -> str:
    """sha256 of the vectors' tensors and emotions: a changed fit never reuses sweep rows."""
    digest = hashlib.sha256()
    for tensor in (vecs.vectors, vecs.center, vecs.resid_norms):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update("|".join(vecs.emotions).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """Everything shared by the cells of one sweep (small and picklable: it travels to Ray workers)."""

    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    intervention: str
    positions: str
    control: str | None
    seed: int


def sweep(
    model: HookedTransformer,
    vecs: EmotionVectors,
    prompts: Sequence[str],
    emotions: Sequence[str],
    layers: Sequence[int] | str,
    alphas: Sequence[float],
    targets: Sequence[str] = (),
    positions: str = "all",
    intervention: str = "steer",
    control: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    model_factory: Callable[[], HookedTransformer] | None = None,
) -> list[dict[str, Any]]:
    """Run every (emotion, layer, alpha) cell; returns one row per cell in grid order.

    ``intervention="steer"`` adds ``alpha * resid_norm(L) * direction``; ``"ablate"``
    removes ``alpha`` times the emotion's component (1.0 = full projection out).
    ``positions``: ``"all"`` prompt tokens or each prompt's ``"last"`` token.
    ``control="random"``: seeded random directions of the same norm (or random
    bases of the same rank) in place of the emotions'.
    ``executor="ray"`` maps the cells over a Ray cluster (``address``; ``workers`` actors,
    each loading the model once with ``model_factory``, by default the packaged model of
    the same name); rows stream back and only this process writes ``out``.
    """
    vecs.check_model(model)
    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    if positions not in SWEEP_POSITIONS:
        raise ValueError(f"sweep positions must be one of {SWEEP_POSITIONS} (prompts only), got {positions!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    check_control(control)
    if not prompts:
        raise ValueError("no prompts given; pass at least one prompt")
    names = [check_emotion(e, vecs.emotions) for e in emotions]
    chosen_layers = intervention_layers(vecs, layers)
    strengths = [check_alpha(a) for a in alphas]
    if not names or not strengths:
        raise ValueError("a sweep needs at least one emotion and one alpha")
    spec = SweepSpec(tuple(prompts), tuple(targets), intervention, positions, control, seed)
    target_token_ids(model, targets)  # fail early on an empty target
    shared = {
        "version": SWEEP_VERSION,
        "model": model_identity(model),
        "vectors": vectors_fingerprint(vecs),
        "prompts": hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()[:16],
        "targets": list(targets),
        "intervention": intervention,
        "positions": positions,
        "control": control,
        "seed": seed,
    }
    cells = [
        Cell(e, layer, a, row_key({**shared, "emotion": e, "layer": layer, "alpha": a}))
        for layer in chosen_layers
        for e in names
        for a in strengths
    ]
    store = JsonlStore(out) if out is not None else None
    todo = [cell for cell in cells if store is None or cell.key not in store]
    computed: dict[str, dict[str, Any]] = {}
    if todo:
        if executor == "ray":
            from emolens.sweep_ray import run_on_ray

            rows = run_on_ray(model_factory or packaged_factory(model), vecs, spec, todo, address, workers)
        else:
            rows = run_local(model, vecs, spec, todo)
        with tqdm(total=len(todo), desc="sweep cells", unit="cell", disable=not progress) as bar:
            for row in rows:
                if store is not None:
                    store.append(row)
                computed[row["key"]] = row
                bar.update(1)
    done = {**(store.rows if store is not None else {}), **computed}
    return [done[cell.key] for cell in cells]


def packaged_factory(model: HookedTransformer) -> Callable[[], HookedTransformer]:
    """A picklable loader of the same packaged model, for workers in other processes."""
    from emolens.models import load_model
    from emolens.packaged_models import PACKAGED_MODELS

    name = str(model_identity(model).get("model_name"))
    if name not in PACKAGED_MODELS:
        raise ValueError(f"{name!r} is not a packaged model; pass model_factory=<callable returning the model>")
    return functools.partial(load_model, name, device=str(model.cfg.device))


def run_local(
    model: HookedTransformer, vecs: EmotionVectors, spec: SweepSpec, cells: list[Cell]
) -> Iterator[dict[str, Any]]:
    """The in-process executor: one runner, layers in order."""
    runner = CellRunner(model, vecs, spec)
    layers = sorted({cell.layer for cell in cells})
    runner.cache_layers(layers)
    for layer in layers:
        yield from runner.run_layer(layer, [cell for cell in cells if cell.layer == layer])


class CellRunner:
    """Shares the unsteered pass across cells and batches cells per layer."""

    def __init__(self, model: HookedTransformer, vecs: EmotionVectors, spec: SweepSpec) -> None:
        self.model, self.vecs, self.spec = model, vecs, spec
        self.targets = list(spec.targets)
        self.target_ids = target_token_ids(model, spec.targets)
        self.intervention, self.positions, self.control, self.seed = (
            spec.intervention, spec.positions, spec.control, spec.seed
        )  # fmt: skip
        batch = prompt_batch(model, spec.prompts)
        device = torch.device(model.cfg.device or "cpu")
        self.tokens = batch.tokens.to(device)
        self.last = batch.last.to(device)
        self.resid: dict[int, Tensor] = {}
        self.base_logprobs: Tensor | None = None
        self.base_negentropy: Tensor | None = None  # sum p log p of the unsteered next token, per prompt

    def cache_layers(self, layers: list[int]) -> None:
        """The unsteered pass: ``resid_post`` at ``layers`` and the next-token log-probs."""
        names = {resid_hook(layer) for layer in layers}
        n_layers = self.model.cfg.n_layers
        with torch.inference_mode():
            final, cache = self.model.run_with_cache(
                self.tokens, names_filter=lambda name: name in names, stop_at_layer=n_layers
            )
            assert isinstance(final, Tensor)
            self.resid = {layer: cache[resid_hook(layer)] for layer in layers}
            self.base_logprobs = next_token_logprobs(self.model, final[torch.arange(len(self.last)), self.last])
            self.base_negentropy = (self.base_logprobs.exp() * self.base_logprobs).sum(dim=-1)

    def _edit(self, resid: Float[Tensor, "prompt pos d_model"], cell: Cell) -> Float[Tensor, "prompt pos d_model"]:
        """The intervened residual stream of one cell at its layer."""
        mask = torch.ones(resid.shape[:2], dtype=resid.dtype, device=resid.device)
        if self.positions == "last":
            mask = torch.nn.functional.one_hot(self.last, resid.shape[1]).to(resid.dtype)
        if self.intervention == "steer":
            direction = steering_vector(self.vecs, cell.emotion, cell.layer, self.control, self.seed)
            delta = cell.alpha * self.vecs.resid_norm(cell.layer) * direction.to(resid.device, resid.dtype)
            return resid + einops.einsum(mask, delta, "prompt pos, d -> prompt pos d")
        basis = ablation_basis(self.vecs, cell.emotion, cell.layer, self.control, self.seed).to(
            resid.device, resid.dtype
        )
        ablated = project_out(resid, basis, strength=cell.alpha)
        return resid + einops.rearrange(mask, "prompt pos -> prompt pos 1") * (ablated - resid)

    def run_layer(self, layer: int, cells: list[Cell]) -> list[dict[str, Any]]:
        n_prompts = self.tokens.shape[0]
        per_forward = max(1, ROW_BUDGET // n_prompts)
        rows = []
        for start in range(0, len(cells), per_forward):
            group = cells[start : start + per_forward]
            edited = torch.cat([self._edit(self.resid[layer], cell) for cell in group])
            last = self.last.repeat(len(group))
            with torch.inference_mode():
                final = self.model(edited, start_at_layer=layer + 1, stop_at_layer=self.model.cfg.n_layers)
                # one unembedding for the whole group: with few rows it is bound by reading the
                # vocab x d_model weights, so per-cell calls would read them once per cell
                logprobs = next_token_logprobs(self.model, final[torch.arange(len(last)), last])
                for index, cell in enumerate(group):
                    rows.append(self._row(cell, logprobs[index * n_prompts : (index + 1) * n_prompts]))
        return rows

    def _row(self, cell: Cell, logprobs: Float[Tensor, "prompt vocab"]) -> dict[str, Any]:
        base = self.base_logprobs
        assert base is not None, "cache_layers() runs the unsteered pass first"
        assert self.base_negentropy is not None
        kl = (self.base_negentropy - einops.einsum(base.exp(), logprobs, "prompt vocab, prompt vocab -> prompt")).clamp(
            min=0
        )
        by_prompt = {
            word: logprobs[:, token].tolist() for word, token in zip(self.targets, self.target_ids, strict=True)
        }
        row = {
            "key": cell.key,
            "emotion": cell.emotion,
            "layer": cell.layer,
            "alpha": cell.alpha,
            "positions": self.positions,
            "intervention": self.intervention,
            "control": self.control,
            "seed": self.seed,
            "n_prompts": int(logprobs.shape[0]),
            "target_logprob": {word: _mean(values) for word, values in by_prompt.items()},
            "target_logprob_by_prompt": by_prompt,
            "kl": float(kl.mean()),
            "kl_by_prompt": kl.tolist(),
        }
        return row


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One line per cell: the grid coordinates, ``kl`` and one ``logprob:WORD`` column per target."""
    targets = sorted({word for row in rows for word in row["target_logprob"]})
    header = ["emotion", "layer", "alpha", "positions", "intervention", "control", "n_prompts", "kl"]
    lines = [",".join(header + [f"logprob:{word}" for word in targets])]
    for row in rows:
        values = [row[key] for key in header] + [row["target_logprob"].get(word) for word in targets]
        lines.append(",".join(_csv_cell(value) for value in values))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text
