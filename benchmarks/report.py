"""Markdown tables of the benches' recorded figures (benchmarks/results/*.json, `record.write`):
one table per file, with its commit, date and the machine's sgemm rate of that run.

    .venv/bin/python benchmarks/report.py [FILES...]     # default: every file in benchmarks/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import record


def _flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flat(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(path: Path) -> str:
    """One run's figures as a markdown section."""
    run = json.loads(path.read_text())
    head = (
        f"### {run['bench']} ({path.name})\n\n"
        f"commit {run['commit']}, {run['date']}, {run['machine']['cpus']} CPUs, "
        f"{run['machine']['threads']} threads, sgemm {run['sgemm_gflops']:.1f} GFLOP/s\n\n"
        "| figure | value |\n|---|---|\n"
    )
    figures = run["figures"].get("summary", run["figures"])  # bench_gram keeps its raw rows apart
    return head + "\n".join(f"| `{k}` | {_value(v)} |" for k, v in _flat(figures)) + "\n"


def main(argv: list[str]) -> None:
    files = [Path(a) for a in argv] or sorted(record.RESULTS.glob("*.json"))
    if not files:
        sys.exit(f"no recorded figures in {record.RESULTS}; run `make bench` first")
    print("\n".join(table(f) for f in files))


if __name__ == "__main__":
    main(sys.argv[1:])
