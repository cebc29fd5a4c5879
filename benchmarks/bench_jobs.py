"""What a job costs before it works: each rule script's start-up, this checkout vs a baseline commit.

A job is a fresh Python process that runs Snakemake's script preamble (unpickling the `snakemake`
object imports `snakemake.script`) and then its rule script, whose imports load the library and
what it needs (torch, xarray, zarr, matplotlib, sklearn). For every rule script this measures, in
fresh interpreters, the wall time of the preamble's import plus the script's module-level imports,
for this checkout and for `--baseline` (a `git worktree` of that commit, default the last landed
one before the job start-up work), interleaved, median of `--repeats`. It also prints the
default run's per-rule job times from `results/benchmarks/per_rule.tsv` when a run left one.

    .venv/bin/python benchmarks/bench_jobs.py                  # 7 repeats, baseline 336f2fe
    .venv/bin/python benchmarks/bench_jobs.py --quick          # 3 repeats
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "336f2fe"  # the last landed commit before the job start-up work (issue 24)
SCRIPTS = ("similarity", "probe", "aggregate", "figures", "extract", "train", "attack")


def script_imports(scripts_dir: Path, job: str) -> str:
    """The code a job runs before its first line of work: the preamble's import, then the rule
    script's module-level imports with its directory on sys.path."""
    tree = ast.parse((scripts_dir / f"{job}.py").read_text())
    lines = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    return "\n".join(
        ["import snakemake.script", f"import sys; sys.path.insert(0, {str(scripts_dir)!r})", *lines]
    )


def start_seconds(code: str) -> float:
    """Wall seconds of a fresh interpreter running `code`."""
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare with")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--json", type=Path, help="where the figures go")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    with tempfile.TemporaryDirectory(prefix="robrep-baseline-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.baseline],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            codes = {
                job: {
                    "baseline": script_imports(base / "workflow_scripts", job),
                    "now": script_imports(ROOT / "workflow_scripts", job),
                }
                for job in SCRIPTS
            }
            seconds = {job: {"baseline": [], "now": []} for job in SCRIPTS}
            start_seconds("import snakemake.script")  # warm the page cache for both trees
            for _ in range(args.repeats):
                for job in SCRIPTS:
                    for side in ("baseline", "now"):
                        seconds[job][side].append(start_seconds(codes[job][side]))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True
            )
    figures = {}
    print(f"job start-up (preamble + the rule script's imports), median of {args.repeats}")
    print(f"  {'job':<12}{args.baseline:>10}{'now':>10}{'now/before':>12}")
    for job in SCRIPTS:
        before = statistics.median(seconds[job]["baseline"])
        now = statistics.median(seconds[job]["now"])
        print(f"  {job:<12}{before:>9.2f}s{now:>9.2f}s{now / before:>11.2f}x")
        figures[f"{job}_baseline_s"], figures[f"{job}_now_s"] = before, now
        figures[f"{job}_now_over_baseline"] = now / before
    table = args.results / "benchmarks" / "per_rule.tsv"
    if table.exists():
        print(f"\nper-rule job times of the last run ({table}):")
        print(table.read_text())
    record.write("bench_jobs", args, figures, threads=1)


if __name__ == "__main__":
    main()
