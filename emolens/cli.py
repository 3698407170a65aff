"""Command line: ``emolens fit | score | calibrate | sweep | run | monitor | corpus``.

Every command takes ``--model`` (a packaged model name, default gemma-3-270m) and
``--device``; errors print one line naming the fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emolens.allocator import retain_freed_memory
from emolens.models import DTYPES
from emolens.packaged_models import DEFAULT_MODEL

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from emolens.vectors import EmotionVectors


def _load(args: argparse.Namespace, name: str | None = None) -> HookedTransformer:
    """The model named by ``--model`` (or ``name``) on ``--device`` in ``--dtype``."""
    from emolens.models import load_model

    return load_model(name or args.model, device=args.device, dtype=args.dtype)


def _fit(args: argparse.Namespace) -> int:
    from emolens.fit import fit_emotion_vectors

    model = _load(args)
    started = time.perf_counter()
    vectors = fit_emotion_vectors(
        model, layers="all", method=args.method, denoise_variance=args.denoise_variance, window_start=args.window
    )
    vectors.metadata["fit_seconds"] = round(time.perf_counter() - started, 1)
    path = vectors.save(Path(args.out) / "vectors.safetensors")
    print(f"wrote {path} and {path.with_suffix('.json').name} ({vectors.metadata['fit_seconds']} s)")
    return 0


def _read_inputs(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        from emolens.corpus import read_jsonl

        return [str(row["text"]) for row in read_jsonl(path)]
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text; put one text per line (.txt) or {{'text': ...}} per line (.jsonl)")
    return texts


def _vectors_and_model(args: argparse.Namespace) -> tuple[EmotionVectors, HookedTransformer]:
    """The vectors file and its model (``--model`` or the model recorded in the file)."""
    from emolens.vectors import EmotionVectors

    vectors = EmotionVectors.load(args.vectors)
    name = args.model or vectors.metadata.get("model", {}).get("model_name", DEFAULT_MODEL)
    return vectors, _load(args, name)


def _score(args: argparse.Namespace) -> int:
    vectors, model = _vectors_and_model(args)
    texts = _read_inputs(Path(args.input))
    scores = vectors.score(model, texts, layer=args.layer, calibrated=not args.raw)
    layer = vectors.default_layer if args.layer is None else args.layer
    if args.json:
        rows = [
            {
                "text": text,
                "layer": layer,
                "scores": {e: round(float(v), 4) for e, v in zip(vectors.emotions, row, strict=True)},
            }
            for text, row in zip(texts, scores, strict=True)
        ]
        print(json.dumps(rows, indent=1))
        return 0
    for text, row in zip(texts, scores, strict=True):
        top = row.topk(min(args.top, len(vectors.emotions)))
        tops = ", ".join(
            f"{vectors.emotions[int(i)]} {float(v):+.3f}" for v, i in zip(top.values, top.indices, strict=True)
        )
        print(f"layer {layer} {text[:60]!r}: {tops}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from emolens.readout import calibrate

    vectors, model = _vectors_and_model(args)
    started = time.perf_counter()
    calibration = calibrate(vectors, model, method=args.method)
    path = vectors.save(args.out or args.vectors)
    seconds = time.perf_counter() - started
    print(f"wrote {path} (calibration {calibration.method}, {calibration.settings['tokens']} tokens, {seconds:.0f} s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from emolens.pipeline import run_all

    outcome = run_all(
        args.model,
        Path(args.out),
        profile=args.profile,
        only=args.only,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        vectors_path=Path(args.vectors) if args.vectors else None,
    )
    if outcome.failures:
        names = ", ".join(outcome.failures)
        print(f"emolens: {len(outcome.failures)} stage(s) failed ({names}); tracebacks above", file=sys.stderr)
        return 1
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from emolens.sweep import sweep, write_csv

    vectors, model = _vectors_and_model(args)
    out = Path(args.out)
    rows = sweep(
        model,
        vectors,
        _read_inputs(Path(args.prompts)),
        args.emotions,
        args.layers,
        args.alphas,
        targets=args.targets or [],
        positions=args.positions,
        intervention=args.intervention,
        control=args.control,
        seed=args.seed,
        out=out / "sweep.jsonl",
        executor=args.executor,
        address=args.address,
        workers=args.workers,
    )
    csv_path = write_csv(rows, out / "sweep.csv")
    print(f"{len(rows)} cells in {out / 'sweep.jsonl'} and {csv_path}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from emolens.monitor import format_reading, monitor, write_html

    vectors, model = _vectors_and_model(args)
    readings = []
    options = {"emotions": args.emotions, "layer": args.layer, "top": args.top, "calibrated": not args.raw}
    for reading in monitor(model, vectors, args.prompt, args.max_new_tokens, **options):
        readings.append(reading)
        if reading.generated:
            print(format_reading(reading), flush=True)
    print("text: " + "".join(r.token for r in readings if r.generated))
    if args.html:
        print(f"wrote {write_html(args.html, readings, args.emotions)}")
    return 0


def _corpus(args: argparse.Namespace) -> int:
    from emolens.corpus import CorpusError, validate_corpus

    if args.corpus_command == "validate":
        failed = 0
        for path in args.files:  # every file is checked and every problem listed, one per line
            try:
                rows = validate_corpus(path, all_emotions=not args.partial)
            except (CorpusError, FileNotFoundError) as err:
                failed += 1
                print(f"emolens: {err}", file=sys.stderr)
                continue
            print(f"{path}: OK ({len(rows)} rows)")
        return 2 if failed else 0
    from emolens.corpus_generate import generate_stories, write_jsonl

    model = _load(args)
    result = generate_stories(
        model,
        args.emotions,
        n_topics=args.topics,
        per_topic=args.per_topic,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    out = write_jsonl(Path(args.out), result.accepted)
    rejected = write_jsonl(out.with_suffix(".rejected.jsonl"), result.rejected)
    print(f"wrote {len(result.accepted)} accepted stories to {out}, {len(result.rejected)} rejected to {rejected}")
    if result.accepted:
        validate_corpus(out, all_emotions=False, min_per_emotion=0, min_validation=0)
        print(f"{out}: passes the corpus validator")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emolens", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)

    def placement(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
        p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights' dtype (default float32)")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL, help="packaged model name (default %(default)s)")
        placement(p)

    def from_vectors(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="default: the model recorded in the vectors file")
        placement(p)

    fit = sub.add_parser("fit", help="fit emotion vectors at every layer on the packaged corpus")
    common(fit)
    fit.add_argument("--out", required=True, help="directory for vectors.safetensors + vectors.json")
    fit.add_argument("--method", default="mean_diff", choices=["mean_diff", "mean_diff_raw", "probe"])
    fit.add_argument("--denoise-variance", type=float, default=0.5)
    fit.add_argument("--window", type=int, default=50, help="first token position averaged (default 50)")
    fit.set_defaults(handler=_fit)

    score = sub.add_parser("score", help="score texts on every emotion at one layer (calibrated)")
    from_vectors(score)
    score.add_argument("--vectors", required=True)
    score.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl with a 'text' field")
    score.add_argument("--layer", type=int, default=None)
    score.add_argument("--top", type=int, default=5)
    score.add_argument("--json", action="store_true", help="print every score as JSON")
    score.add_argument("--raw", action="store_true", help="raw projections instead of calibrated readings")
    score.set_defaults(handler=_score)

    calibrate = sub.add_parser("calibrate", help="measure the readout calibration of a vectors file on neutral text")
    from_vectors(calibrate)
    calibrate.add_argument("--vectors", required=True, help="vectors file to calibrate (format 1 or 2)")
    methods = ["position", "position+scale", "global", "global+scale"]  # emolens.readout.CALIBRATION_METHODS
    calibrate.add_argument("--method", default="position", choices=methods)
    calibrate.add_argument("--out", default=None, help="write here instead of updating --vectors in place")
    calibrate.set_defaults(handler=_calibrate)

    run = sub.add_parser("run", help="the main job: fit, validate, experiments and the HTML report")
    common(run)
    run.add_argument("--out", required=True, help="run directory: vectors, results/*.json, report/*.html")
    run.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"], help="sizes (default %(default)s)")
    run.add_argument("--only", nargs="+", metavar="EXP", help="run only these stages (validation or experiments)")
    run.add_argument("--vectors", default=None, help="use this fitted vectors file instead of fitting into --out")
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(handler=_run)

    sweep = sub.add_parser("sweep", help="layer x strength steering or ablation grid (resumable JSONL + CSV)")
    from_vectors(sweep)
    sweep.add_argument("--vectors", required=True)
    sweep.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl with a 'text' field")
    sweep.add_argument("--emotions", nargs="+", required=True)
    sweep.add_argument("--layers", nargs="+", type=int, required=True)
    sweep.add_argument("--alphas", nargs="+", type=float, required=True, help="strengths in mean-residual-norm units")
    sweep.add_argument("--targets", nargs="*", default=[], help="words whose log P(' word') is measured")
    sweep.add_argument("--positions", default="all", choices=["all", "last"])
    sweep.add_argument("--intervention", default="steer", choices=["steer", "ablate"])
    sweep.add_argument("--control", default=None, choices=["random"], help="random directions of equal norm")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--out", required=True, help="directory for sweep.jsonl (resumable) and sweep.csv")
    sweep.add_argument("--executor", default="local", choices=["local", "ray"], help="ray: pip install 'emolens[ray]'")
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    sweep.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per CPU)")
    sweep.set_defaults(handler=_sweep)

    monitor = sub.add_parser("monitor", help="generate text and show each token's top emotion readings live")
    from_vectors(monitor)
    monitor.add_argument("--vectors", required=True)
    monitor.add_argument("prompt")
    monitor.add_argument("--max-new-tokens", type=int, default=32)
    monitor.add_argument("--emotions", nargs="+", default=None, help="readings to keep (default: all fitted)")
    monitor.add_argument("--layer", type=int, default=None, help="default: the vectors' default layer")
    monitor.add_argument("--top", type=int, default=5)
    monitor.add_argument("--html", default=None, help="also write a page of coloured tokens (circuitsvis)")
    monitor.add_argument("--raw", action="store_true", help="raw projections instead of calibrated readings")
    monitor.set_defaults(handler=_monitor)

    corpus = sub.add_parser("corpus", help="validate or generate corpus files")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    validate = corpus_sub.add_parser("validate", help="validate story or neutral JSONL files")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--partial", action="store_true", help="do not require all 171 emotions")
    validate.set_defaults(handler=_corpus)
    generate = corpus_sub.add_parser("generate", help="write stories with a chat model, then validate them")
    common(generate)
    generate.add_argument("--emotions", nargs="+", required=True)
    generate.add_argument("--per-topic", type=int, default=1)
    generate.add_argument("--topics", type=int, default=12, help="how many topics per emotion")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--max-new-tokens", type=int, default=220)
    generate.add_argument("--out", required=True)
    generate.set_defaults(handler=_corpus)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    try:
        return int(args.handler(args))
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"emolens: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
