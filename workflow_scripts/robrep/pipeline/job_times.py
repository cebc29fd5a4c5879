"""What every job of a run cost, per rule, from Snakemake's `benchmark:` files, beside what the
resource model asked for it: the check that the model's runtime and memory requests hold.

Each rule writes `results/benchmarks/<rule>/<job>.tsv` (Snakemake's columns: `s` wall seconds,
`cpu_time`, `max_rss` MB, ...). `per_rule` sums them; given each job's estimate (its benchmark
path -> mem_mb and runtime minutes, from `pipeline.jobs.JobSizer`) it also reports the largest
ratio of measured to requested, so a request that a job outgrew (and that SLURM would kill) shows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from robrep.io.atomic import atomic_output

COLUMNS = (
    "rule",
    "jobs",
    "wall_s",
    "mean_wall_s",
    "max_wall_s",
    "cpu_s",
    "max_rss_mb",
    "max_wall_over_runtime",
    "max_rss_over_mem_mb",
)


@dataclass
class JobRecord:
    """One job's measurement (the last row of its benchmark file)."""

    rule: str
    wall_s: float
    cpu_s: float
    max_rss_mb: float


@dataclass
class RuleTimes:
    """The jobs of one rule: sums, maxima, and the worst measured/requested ratios (None where
    the rule is not sized or no job was)."""

    rule: str
    jobs: int = 0
    wall_s: float = 0.0
    max_wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "jobs": str(self.jobs),
            "wall_s": f"{self.wall_s:.1f}",
            "mean_wall_s": f"{self.wall_s / self.jobs:.2f}",
            "max_wall_s": f"{self.max_wall_s:.2f}",
            "cpu_s": f"{self.cpu_s:.1f}",
            "max_rss_mb": f"{self.max_rss_mb:.0f}",
            "max_wall_over_runtime": _ratio(self.ratios.get("runtime")),
            "max_rss_over_mem_mb": _ratio(self.ratios.get("mem_mb")),
        }


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _number(text: str) -> float:
    """A benchmark column's value; Snakemake writes "NA" or "-" where psutil saw nothing."""
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def read_record(path: Path, rule: str) -> JobRecord:
    """The last measurement in one benchmark file (a `repeat` writes several rows)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[-1]:
        raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column)")
    last = rows[-1]
    return JobRecord(
        rule, _number(last["s"]), _number(last.get("cpu_time", "")), _number(last["max_rss"])
    )


def per_rule(
    root: str | Path, estimates: Mapping[str, Mapping[str, float]] | None = None
) -> list[RuleTimes]:
    """Every rule's totals over the benchmark files under `root` (`<rule>/**/*.tsv`, present ones
    only), in decreasing total wall time. `estimates` maps a benchmark path (as the workflow
    builds it) to that job's requested `runtime` (minutes) and `mem_mb`."""
    root = Path(root)
    estimates = {str(Path(k)): v for k, v in (estimates or {}).items()}
    rules: dict[str, RuleTimes] = {}
    for path in sorted(root.glob("*/**/*.tsv")):
        rule = path.relative_to(root).parts[0]
        record = read_record(path, rule)
        times = rules.setdefault(rule, RuleTimes(rule))
        times.jobs += 1
        times.wall_s += record.wall_s
        times.max_wall_s = max(times.max_wall_s, record.wall_s)
        times.cpu_s += record.cpu_s
        times.max_rss_mb = max(times.max_rss_mb, record.max_rss_mb)
        asked = estimates.get(str(path))
        if asked:
            for key, measured in (("runtime", record.wall_s / 60), ("mem_mb", record.max_rss_mb)):
                if asked.get(key):
                    ratio = measured / asked[key]
                    times.ratios[key] = max(times.ratios.get(key, 0.0), ratio)
    return sorted(rules.values(), key=lambda t: -t.wall_s)


def write_table(times: list[RuleTimes], path: str | Path) -> None:
    """`per_rule`'s table as TSV, written atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows(t.row() for t in times)


def format_table(times: list[RuleTimes]) -> str:
    """The table as aligned text for the console, with the run's total wall time of all jobs."""
    rows = [t.row() for t in times]
    header = ["rule", "jobs", "wall s", "mean s", "max s", "cpu s", "max RSS MB"]
    header += ["wall/runtime", "RSS/mem_mb"]
    cells = [header] + [[r[c] for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    total = sum(t.wall_s for t in times)
    lines.append(f"all jobs: {sum(t.jobs for t in times)}, {total:.0f} s of job wall time")
    return "\n".join(lines)
