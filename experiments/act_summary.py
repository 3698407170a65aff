"""Markdown tables of the act half (feels + ablation results JSON) for docs/results.md.

``python -m experiments.act_summary runs/gemma-3-270m runs/smollm2-135m-instruct``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def fmt(estimate: dict[str, float] | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate['value']:+.3f} [{estimate['low']:+.3f}, {estimate['high']:+.3f}]"


def feels_table(data: dict[str, Any]) -> str:
    lines = [
        "| layer | alpha | effect [95% CI] | random control | effect - control | neutral KL | incoherent from alpha |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["per_layer"]:
        incoherent = row["first_incoherent_alpha"] if row["first_incoherent_alpha"] is not None else "none tested"
        flag = "" if row.get("usable", True) else " (KL > 1: none usable)"
        lines.append(
            f"| {row['layer']} | {row['alpha']:+g}{flag} | {fmt(row['effect'])} | {fmt(row['control'])} | "
            f"{fmt(row['difference'])} | {row['neutral_kl']:.3f} | {incoherent} |"
        )
    return "\n".join(lines)


def ablation_table(data: dict[str, Any]) -> str:
    lines = [
        "| layer | own direction | random | valence axis | random | feels change | random |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["per_layer"]:
        lines.append(
            f"| {row['layer']} | {fmt(row['effect'])} | {fmt(row['control'])} | {fmt(row['valence'])} | "
            f"{fmt(row['valence_control'])} | {fmt(row['feels'])} | {fmt(row['feels_control'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    for run_dir in map(Path, argv if argv is not None else sys.argv[1:]):
        results = run_dir / "results"
        for name, table in (("feels", feels_table), ("ablation", ablation_table)):
            path = results / f"{name}.json"
            if path.exists():
                data = json.loads(path.read_text())
                print(f"\n#### {name}: {data['model']} (profile {data['profile']}, {data.get('seconds', '?')} s)\n")
                print(table(data))


if __name__ == "__main__":
    main()
