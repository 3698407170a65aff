"""The main job (``emolens run``): fit or reuse vectors, validate per layer, write results and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from emolens.files import atomic_write_text
from emolens.fit import fit_emotion_vectors
from emolens.models import load_model
from emolens.report.page import Page
from emolens.report.validation_section import validation_section
from emolens.validation import validate
from emolens.vectors import EmotionVectors


def fitted_or_fit(model_name: str, out: Path, device: str | None = None) -> tuple[EmotionVectors, HookedTransformer]:
    """Load ``OUT/vectors.safetensors`` when it matches the model (resumable), else fit and save it."""
    model = load_model(model_name, device=device)
    path = out / "vectors.safetensors"
    if path.exists():
        vectors = EmotionVectors.load(path)
        try:
            vectors.check_model(model)
            print(f"reusing {path} (delete it to refit)")
            return vectors, model
        except ValueError as err:
            print(f"refitting: {err}")
    started = time.perf_counter()
    vectors = fit_emotion_vectors(model)
    vectors.metadata["fit_seconds"] = round(time.perf_counter() - started, 1)
    vectors.metadata["torch_threads"] = torch.get_num_threads()
    vectors.save(path)
    return vectors, model


def run_all(model_name: str, out: Path, device: str | None = None) -> Path:
    """Fit (or reuse) vectors, validate them, write ``OUT/results/*.json`` and ``OUT/report/index.html``."""
    vectors, model = fitted_or_fit(model_name, out, device)
    sample = model.generate("The capital of France is", max_new_tokens=8, do_sample=False, verbose=False)
    print(f"model check (greedy): {sample!r}")
    validation = validate(vectors, model)
    results = out / "results"
    atomic_write_text(results / "validation.json", json.dumps(validation.to_dict(), indent=1))
    page = Page(f"emolens report: {model_name}")
    validation_section(page, validation, vectors)
    report = page.write(out / "report" / "index.html")
    best = next(acc for acc in validation.per_layer if acc.layer == validation.best_layer)
    print(
        f"validation: best layer {best.layer} top-1 {best.top1:.3f} top-5 {best.top5:.3f} "
        f"(chance {validation.chance_top1:.3f}/{validation.chance_top5:.3f}); default layer {vectors.default_layer}"
    )
    print(f"wrote {results / 'validation.json'} and {report}")
    return report
