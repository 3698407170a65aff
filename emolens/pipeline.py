"""The main job (``emolens run``): load, fit (or reuse), validate, every experiment of a profile, report.

Every stage after loading writes ``OUT/results/NAME.json`` atomically, with a ``_stage``
block holding the stage's *key*: a hash of the model identity, the vectors file, the
profile, the seed, the packaged data and the source of the code the stage runs. A rerun
skips a stage whose key is unchanged, so a killed run resumes where it stopped and a
changed setting (or code, or data) recomputes only what it touches. The report is
rebuilt from whatever results exist.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformer

from emolens.corpus import Story, data_path, load_neutral, load_stories
from emolens.experiments import PROFILES, check_experiment, check_profile, load_experiment
from emolens.files import atomic_write_text
from emolens.fit import fit_emotion_vectors
from emolens.models import load_model, model_identity, tiny_random_model
from emolens.report.site import build_report
from emolens.stages import Stage, run_stages
from emolens.vectors import EmotionVectors

TINY = "tiny"  # ``--model tiny``: the random test model with a small fit (smoke tests, the browser test)
TINY_EMOTIONS = (
    *("afraid", "angry", "blissful", "calm", "desperate", "happy"),
    *("hostile", "joyful", "loving", "nervous", "proud", "sad"),
    *("envious", "panicked", "excited", "bored"),  # three speaker pairs (speakers.jsonl)
)
FIT_SETTINGS: dict[str, Any] = {"method": "mean_diff", "denoise_variance": 0.5, "window_start": 50, "emotions": "all"}
CPU_FIT_SETTINGS: dict[str, Any] = {  # every emotion, fewer texts: the fit of a 2-core run (docs/results.md)
    **FIT_SETTINGS,
    "stories_per_emotion": 5,  # per split: the first 5 of 10 training stories; both validation stories stay
    "neutral_stride": 2,  # every other neutral text: half of them, dialogues and expository alike
}
QUICK_EMOTIONS = (  # the quick profile's fit on a packaged model: covers every experiment's emotion list
    *("happy", "excited", "proud", "loving", "calm", "surprised", "sad", "afraid", "angry", "ashamed", "bored"),
    *("nervous", "desperate", "blissful", "hostile", "joyful", "content", "anxious", "guilty", "grateful"),
    *("lonely", "hopeful", "frustrated", "peaceful"),
    *("envious", "panicked"),  # with proud, calm, excited, bored: three speaker pairs (speakers.jsonl)
)
TINY_FIT_SETTINGS: dict[str, Any] = {
    **FIT_SETTINGS,
    "window_start": 20,
    "emotions": list(TINY_EMOTIONS),
    "neutral": 6,
    "stories_per_emotion": 3,  # per split
    "story_chars": 300,  # stories and neutral texts cut to this many characters
}


@dataclass
class RunOutcome:
    """What a run produced: the report's index page, stage timings and any failed stages."""

    report: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def load(model_name: str, device: str | None = None, dtype: str = "float32") -> HookedTransformer:
    """A packaged model by name, or the tiny random model for ``"tiny"``."""
    return tiny_random_model(seed=0) if model_name == TINY else load_model(model_name, device=device, dtype=dtype)


def fit_settings(model_name: str, profile: str = "cpu") -> dict[str, Any]:
    """The fit a run makes: the study's recipe on the whole packaged corpus (``full``), on fewer texts
    (``cpu``), on 26 emotions (``quick``), or a tiny one."""
    if model_name == TINY:
        return dict(TINY_FIT_SETTINGS)
    by_profile = {"quick": {**FIT_SETTINGS, "emotions": list(QUICK_EMOTIONS)}, "cpu": CPU_FIT_SETTINGS}
    return dict(by_profile.get(check_profile(profile), FIT_SETTINGS))


def reusable_settings(model_name: str, profile: str = "cpu") -> list[dict[str, Any]]:
    """Fit settings whose vectors serve this run: its own, then those of every larger profile."""
    larger = list(PROFILES)[list(PROFILES).index(check_profile(profile)) :]
    accepted: list[dict[str, Any]] = []
    for settings in (fit_settings(model_name, name) for name in larger):
        if settings not in accepted:
            accepted.append(settings)
    return accepted


def file_digest(*paths: Path) -> str:
    """SHA-256 over the bytes of ``paths`` in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_digest() -> str:
    """SHA-256 of every packaged data file (corpus, prompts, norms): experiments read them."""
    root = data_path("stories.jsonl").parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def corpus_digest() -> str:
    """SHA-256 of the fitting corpus (packaged stories and neutral texts): vectors depend on nothing else."""
    return file_digest(data_path("stories.jsonl"), data_path("neutral.jsonl"))


def code_digest(module: ModuleType) -> str:
    """SHA-256 of a module's source and of the emolens modules it imports names from (one level)."""
    modules = {module.__name__}
    for value in vars(module).values():
        owner = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(owner, str) and owner.startswith("emolens"):
            modules.add(owner)
    digest = hashlib.sha256()
    for name in sorted(modules):
        imported = sys.modules.get(name)
        source = inspect.getsourcefile(imported) if imported else None
        if source:
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def stage_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_result(path: Path) -> dict[str, Any] | None:
    """A results JSON, or ``None`` when absent or unreadable (a killed write never leaves one: writes are atomic)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_result(path: Path, data: dict[str, Any], stage: dict[str, Any]) -> None:
    """``data`` plus its ``_stage`` block, atomically; non-finite numbers are an error."""
    try:
        text = json.dumps({**data, "_stage": stage}, indent=1, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path.stem}: result has NaN or infinite numbers; results must be finite") from None
    atomic_write_text(path, text)


def vectors_mismatch(vectors: EmotionVectors, model: HookedTransformer, accepted: list[dict[str, Any]]) -> str | None:
    """Why ``vectors`` cannot be reused for this run (model, corpus or fit settings differ), or ``None``."""
    try:
        vectors.check_model(model)
    except ValueError as err:
        return str(err)
    if vectors.metadata.get("fit_settings") not in accepted:
        return f"fit settings {vectors.metadata.get('fit_settings')} differ from this run's {accepted[0]}"
    if vectors.metadata.get("corpus_sha256") != corpus_digest():
        return "the packaged corpus changed since these vectors were fitted (or they carry no corpus hash)"
    return None


def stories_for(split: Literal["train", "validation"], settings: dict[str, Any]) -> list[Story] | None:
    """The packaged split, or (when ``settings`` limit it) the first few (shortened) stories of each emotion."""
    if "stories_per_emotion" not in settings:
        return None
    kept: list[Story] = []
    for story in load_stories(split=split):
        wanted = settings["emotions"] == "all" or story.emotion in settings["emotions"]
        if wanted and sum(s.emotion == story.emotion for s in kept) < settings["stories_per_emotion"]:
            kept.append(replace(story, text=story.text[: settings.get("story_chars")]))
    return kept


def fit_vectors(model: HookedTransformer, settings: dict[str, Any]) -> EmotionVectors:
    """Fit with ``settings`` and record them, with the corpus hash, in the vectors' metadata."""
    started = time.perf_counter()
    emotions = None if settings["emotions"] == "all" else settings["emotions"]
    neutral = None
    if "neutral" in settings or "neutral_stride" in settings:
        chosen = load_neutral()[:: settings.get("neutral_stride", 1)][: settings.get("neutral")]
        neutral = [text[: settings.get("story_chars")] for text in chosen]
    vectors = fit_emotion_vectors(
        model,
        stories=stories_for("train", settings),
        neutral=neutral,
        method=settings["method"],
        denoise_variance=settings["denoise_variance"],
        emotions=emotions,
        window_start=settings["window_start"],
    )
    vectors.metadata.update(
        fit_settings=settings,
        corpus_sha256=corpus_digest(),
        fit_seconds=round(time.perf_counter() - started, 1),
        torch_threads=torch.get_num_threads(),
    )
    return vectors


def fitted_or_fit(
    model: HookedTransformer, model_name: str, out: Path, vectors_path: Path | None = None, profile: str = "cpu"
) -> tuple[EmotionVectors, str]:
    """Vectors for this run and how they were obtained ("reused ..." or "fitted").

    ``vectors_path`` (given by the user) must match or the run stops with the reason;
    ``OUT/vectors.safetensors`` is reused when it matches and refitted when it is
    missing, corrupt or stale.
    """
    accepted = reusable_settings(model_name, profile)
    if vectors_path is not None:
        vectors = EmotionVectors.load(vectors_path)
        reason = vectors_mismatch(vectors, model, accepted)
        if reason:
            raise ValueError(f"{vectors_path} cannot be used: {reason}; drop --vectors to fit")
        return vectors, f"reused {vectors_path}"
    path = out / "vectors.safetensors"
    if path.exists():
        try:
            vectors = EmotionVectors.load(path)
            reason = vectors_mismatch(vectors, model, accepted)
        except (ValueError, FileNotFoundError, KeyError) as err:
            reason = f"unreadable ({err})"
        if reason is None:
            return vectors, f"reused {path}"
        print(f"refitting {path}: {reason}")
    vectors = fit_vectors(model, accepted[0])
    vectors.save(path)
    return vectors, "fitted"


def fit_summary(vectors: EmotionVectors, how: str) -> dict[str, Any]:
    """The settings page's view of the vectors (results/fit.json)."""
    meta = vectors.metadata
    return {
        "how": how,
        "emotions": len(vectors.emotions),
        "layers": [vectors.layers[0], vectors.layers[-1]],
        "default_layer": vectors.default_layer,
        "settings": meta.get("fit_settings"),
        "training_stories": sum(meta.get("stories_per_emotion", {}).values()),
        "neutral_tokens": meta.get("neutral_tokens"),
        "fit_seconds": meta.get("fit_seconds"),
        "fitted_at": meta.get("fitted_at"),
        "corpus_sha256": meta.get("corpus_sha256"),
    }


def _clock(seconds: float | int) -> str:
    """``m:ss``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_all(
    model_name: str,
    out: Path,
    profile: str = "cpu",
    only: Sequence[str] | None = None,
    seed: int = 0,
    device: str | None = None,
    vectors_path: Path | None = None,
    dtype: str = "float32",
) -> RunOutcome:
    """Run every stage of ``profile`` (or just ``only``), resuming from ``OUT/results``; build the report."""
    check_profile(profile)
    only = [name if name == "validation" else check_experiment(name) for name in only or ()]
    missing = [name for name in only if name != "validation" and name not in PROFILES[profile]]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in the {profile} profile; choose another --profile")
    chosen = [name for name in PROFILES[profile] if name in only] if only else list(PROFILES[profile])
    modules = [(name, load_experiment(name)) for name in chosen]  # import errors surface before any work
    results = out / "results"
    started = time.perf_counter()
    outcome = RunOutcome(report=out / "report" / "index.html")

    print(f"[load] {model_name}")
    model = load(model_name, device, dtype)
    identity = model_identity(model)
    print(f"[load] done in {time.perf_counter() - started:.1f} s")

    fit_started = time.perf_counter()
    print("[fit] checking for reusable vectors")
    vectors, how = fitted_or_fit(model, model_name, out, vectors_path, profile)
    vectors_file = Path(vectors_path) if vectors_path else out / "vectors.safetensors"
    vectors_hash = file_digest(vectors_file, vectors_file.with_suffix(".json"))
    fit_seconds = time.perf_counter() - fit_started
    fit_stage = {"name": "fit", "status": how, "seconds": round(fit_seconds, 1)}
    write_result(results / "fit.json", fit_summary(vectors, how), {**fit_stage, "key": vectors_hash})
    outcome.stages.append(fit_stage)
    print(f"[fit] {how} ({len(vectors.emotions)} emotions x {len(vectors.layers)} layers) in {fit_seconds:.1f} s")

    shared = {"model": identity, "vectors": vectors_hash, "data": data_digest(), "seed": seed}
    held_out = stories_for("validation", fit_settings(model_name, profile))
    stages, shared_pass = run_stages(model, vectors, modules, profile, seed, held_out)
    stages = [stage for stage in stages if not only or stage.name in only]
    for stage in stages:
        stage.key = stage_key(
            stage=stage.name,
            code=code_digest(stage.module),
            profile=None if stage.name == "validation" else profile,
            **shared,
        )
        stage.previous = (read_result(results / f"{stage.name}.json") or {}).get("_stage", {})
    shared_pass.plan([stage.name for stage in stages if stage.previous.get("key") != stage.key])
    for index, stage in enumerate(stages):
        prefix = f"[{index + 1}/{len(stages)} {stage.name}]"
        if stage.previous.get("key") == stage.key:
            print(f"{prefix} unchanged, reusing results/{stage.name}.json")
            outcome.stages.append({"name": stage.name, "status": "reused", "seconds": stage.previous.get("seconds")})
            continue
        print(f"{prefix} running ({_estimate(stages[index:])}; elapsed {_clock(time.perf_counter() - started)})")
        status = _run_stage(stage, results / f"{stage.name}.json", {"profile": profile, "seed": seed}, outcome)
        print(f"{prefix} {status}")

    run_info = {
        "model_name": model_name,
        "model": identity,
        "profile": profile,
        "seed": seed,
        "device": str(model.cfg.device),
        "torch_threads": torch.get_num_threads(),
        "stages": outcome.stages,
        "failures": outcome.failures,
        "seconds": round(time.perf_counter() - started, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    atomic_write_text(results / "run.json", json.dumps(run_info, indent=1))
    print("[report] writing pages")
    render_failures = build_report(out, experiments=list(PROFILES[profile]))
    outcome.failures.update({f"report:{name}": message for name, message in render_failures.items()})
    print(f"[report] {outcome.report} ({_clock(time.perf_counter() - started)} in all)")
    return outcome


def _estimate(pending: Sequence[Stage]) -> str:
    """Time left from the last recorded duration of each stage that will run."""
    to_run = [stage for stage in pending if stage.previous.get("key") != stage.key]
    known = [float(s.previous["seconds"]) for s in to_run if isinstance(s.previous.get("seconds"), int | float)]
    untimed = len(to_run) - len(known)
    last = to_run[0].previous.get("seconds") if to_run else None
    this = f"last run took {_clock(last)}" if isinstance(last, int | float) else "no earlier timing"
    if not known:
        return f"{this}; {untimed} stage(s) to run, none timed before"
    rest = f"about {_clock(sum(known))} left for {len(known)} timed stage(s)" + (
        f", {untimed} untimed" if untimed else ""
    )
    return f"{this}; {rest}"


def _run_stage(stage: Stage, path: Path, settings: dict[str, Any], outcome: RunOutcome) -> str:
    """Compute and save one stage; a failure is printed with its traceback and recorded, not raised."""
    started = time.perf_counter()
    try:
        data = stage.compute()
        seconds = round(time.perf_counter() - started, 1)
        write_result(path, data, {"name": stage.name, "key": stage.key, "seconds": seconds, **settings})
    except Exception as err:  # one experiment failing must not lose the others: report it and go on
        traceback.print_exc()
        message = str(err).splitlines()[0] if str(err) else ""
        outcome.failures[stage.name] = f"{type(err).__name__}: {message}"
        outcome.stages.append({"name": stage.name, "status": "failed", "seconds": None})
        return f"FAILED: {outcome.failures[stage.name]}"
    outcome.stages.append({"name": stage.name, "status": "computed", "seconds": seconds})
    return f"done in {_clock(seconds)}"
