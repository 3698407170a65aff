"""The report's headline numbers as one markdown table per model, for docs/results.md.

``python -m experiments.headline_table runs/gemma-3-270m runs/smollm2-135m-instruct``

Reads ``DIR/results/*.json`` written by ``emolens run`` and prints each stage's headlines
(measure, ours with its interval and control, the study's figure) in report order, with
each stage's wall time. Stages that failed or did not run are listed as such.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emolens.experiments import EXPERIMENTS, load_experiment
from emolens.report import validation_section


def table(run_dir: Path) -> str:
    results = run_dir / "results"
    run = json.loads((results / "run.json").read_text()) if (results / "run.json").exists() else {}
    name, profile, seconds = run.get("model_name", run_dir.name), run.get("profile", "?"), run.get("seconds", "?")
    lines = [
        f"### {name} (profile {profile}, {seconds} s in all)",
        "",
        "| stage | measure | ours | study | stage time (s) |",
        "|---|---|---|---|---|",
    ]
    headline_sources: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, str]]] | None]
    headline_sources = {"validation": validation_section.headlines}
    headline_sources.update({name: getattr(load_experiment(name), "headlines", None) for name in EXPERIMENTS})
    for name, headlines in headline_sources.items():
        path = results / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | not run | | | |")
            continue
        data = json.loads(path.read_text())
        seconds = data.get("_stage", {}).get("seconds", "")
        rows = headlines(data) if headlines is not None else []
        for measure, ours, study in rows or [("(no headline)", "", "")]:
            lines.append(f"| {name} | {measure} | {ours} | {study} | {seconds} |")
    for name, message in run.get("failures", {}).items():
        lines.append(f"| {name} | FAILED: {message} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    for directory in argv if argv is not None else sys.argv[1:]:
        print(table(Path(directory)) + "\n")


if __name__ == "__main__":
    main()
