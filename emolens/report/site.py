"""The whole report: ``OUT/report/index.html`` plus one page per result, built from ``OUT/results/*.json``.

Nothing is recomputed here: each page is drawn by its experiment's ``render(page, data)``
from the JSON its stage wrote. A page whose render fails is written with the error (and
the traceback goes to stderr) so the rest of the report still appears.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from emolens.experiments import load_experiment
from emolens.report import validation_section
from emolens.report.formact import form_act_figure
from emolens.report.page import Page

Renderer = Callable[[Page, dict[str, Any]], None]


def label(name: str) -> str:
    """Navigation label of a page: ``corpus_scan`` -> ``Corpus scan``."""
    return name.replace("_", " ").capitalize()


def read_results(results: Path) -> dict[str, dict[str, Any]]:
    """Every readable ``NAME.json`` in ``results`` (unreadable files are skipped with a note)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"report: skipping unreadable {path} ({err})")
    return found


def _page_sources(names: Sequence[str]) -> dict[str, tuple[str, Renderer, Callable[..., Any] | None]]:
    """name -> (one-line description, render, headlines or None), in report order."""
    sources: dict[str, tuple[str, Renderer, Callable[..., Any] | None]] = {
        "validation": (
            "Where the emotion directions form: held-out accuracy per layer.",
            validation_section.render,
            validation_section.headlines,
        )
    }
    for name in names:
        module = load_experiment(name)
        about = (module.__doc__ or name).strip().splitlines()[0]
        sources[name] = (about, module.render, getattr(module, "headlines", None))
    return sources


def build_report(out: Path, experiments: Sequence[str]) -> dict[str, str]:
    """Write the index and one page per existing result of ``experiments``; returns render failures."""
    results = read_results(out / "results")
    run = results.get("run", {})
    model = str(run.get("model_name", "model"))
    sources = {name: src for name, src in _page_sources(experiments).items() if name in results}
    nav = [("Overview", "index.html")] + [(label(name), f"{name}.html") for name in sources]
    failures: dict[str, str] = {}
    headline_rows: list[tuple[str, str, str, str]] = []
    for name, (about, render, headlines) in sources.items():
        page = Page(f"{label(name)} · {model}", nav=nav, filename=f"{name}.html")
        page.paragraph(about, css_class="note")
        stage = results[name].get("_stage", {})
        page.paragraph(
            f"profile {stage.get('profile', '-')}, seed {stage.get('seed', '-')}, computed in "
            f"{stage.get('seconds', '-')} s; data: results/{name}.json",
            css_class="note",
        )
        data = {k: v for k, v in results[name].items() if k != "_stage"}
        try:
            render(page, data)
            if headlines is not None:
                headline_rows += [(label(name), str(m), str(ours), str(study)) for m, ours, study in headlines(data)]
        except Exception as err:  # one broken page must not hide the others
            traceback.print_exc()
            failures[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            page.paragraph(f"This page failed to render: {failures[name]}", css_class="failed")
        finally:
            plt.close("all")
        page.write(out / "report" / f"{name}.html")
    index = Page(f"emolens report · {model}", nav=nav, filename="index.html")
    _overview(index, run, results.get("fit", {}), headline_rows, results, sources, failures)
    index.write(out / "report" / "index.html")
    return failures


def _overview(
    page: Page,
    run: dict[str, Any],
    fit: dict[str, Any],
    headline_rows: list[tuple[str, str, str, str]],
    results: dict[str, dict[str, Any]],
    sources: dict[str, tuple[str, Renderer, Callable[..., Any] | None]],
    render_failures: dict[str, str],
) -> None:
    """Settings, headline numbers beside the study's, the form/act figure and the page list."""
    page.paragraph(
        "Where do emotion directions form, and where do they act? Form: can a layer's directions tell "
        "held-out stories apart. Act: does adding (or removing) a direction at that layer change what the "
        "model does, more than a random direction of the same norm."
    )
    page.heading("Headline numbers")
    if headline_rows:
        page.table(["experiment", "measure", "this run (95% CI)", "the study"], headline_rows, left_columns=4)
    else:
        page.paragraph("No results yet.", css_class="note")
    figure = form_act_figure(results)
    if figure is not None:
        page.heading("Form and act, layer by layer")
        page.figure(
            figure,
            "Per layer: held-out accuracy (form); steering and ablation effects with a random direction of "
            "equal norm as control, bars = bootstrap 95% CI (act); attribution mass. Panels shown for the "
            "experiments that have results.",
        )
        plt.close(figure)
    page.heading("Pages")
    for name, (about, _, _) in sources.items():
        note = " (render failed)" if name in render_failures else ""
        page.link(label(name), f"{name}.html", note=about + note)
    page.heading("Model and settings")
    identity = run.get("model", {})
    rows = [("model", run.get("model_name", "-"))]
    rows += [(key, value) for key, value in identity.items()]
    rows += [
        ("profile", run.get("profile", "-")),
        ("seed", run.get("seed", "-")),
        ("device / torch threads", f"{run.get('device', '-')} / {run.get('torch_threads', '-')}"),
        ("vectors", fit.get("how", "-")),
        ("emotions x layers", f"{fit.get('emotions', '-')} x {fit.get('layers', '-')}"),
        ("default layer", fit.get("default_layer", "-")),
        ("fit settings", json.dumps(fit.get("settings"))),
        ("training stories / neutral tokens", f"{fit.get('training_stories', '-')} / {fit.get('neutral_tokens', '-')}"),
        ("fit time (s) / fitted at", f"{fit.get('fit_seconds', '-')} / {fit.get('fitted_at', '-')}"),
        ("run finished", run.get("finished_at", "-")),
    ]
    page.table(["setting", "value"], rows, left_columns=2)
    page.heading("Stages of the last run", level=3)
    stage_rows = [(s["name"], s["status"], s.get("seconds", "-")) for s in run.get("stages", [])]
    page.table(["stage", "status", "seconds"], stage_rows, left_columns=2)
    for name, message in {**run.get("failures", {}), **render_failures}.items():
        page.paragraph(f"{name} failed: {message}", css_class="failed")
