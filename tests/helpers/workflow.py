"""Helpers for tests that run the real Snakemake workflow on a tiny config in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

ROOT = Path(__file__).parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The tiny config of the integration tests: the smoke config users run (`make smoke`).
TINY = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def make_workdir(path: Path, config: dict) -> Path:
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "report", "profiles", "envs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, path / name)
    write_config(path, config)
    return path


def write_config(path: Path, config: dict) -> None:
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    cores: str | None = "2",
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run snakemake in `workdir` (with `--cores cores` unless None; `timeout` guards a hang;
    `env`: more environment variables)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    command = [*SNAKEMAKE, *(["--cores", cores] if cores else []), *args]
    proc = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Rule -> count from Snakemake's 'Job stats' table."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def planned_jobs(output: str) -> list[dict[str, str]]:
    """Jobs of a dry run as {rule, input, output, wildcards} parsed from Snakemake's job blocks."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        job = {"rule": m.group(1)}
        for key in ("input", "output", "wildcards"):
            found = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            job[key] = found.group(1) if found else ""
        jobs.append(job)
    return jobs


def dry_run_with(workdir: Path, config: dict) -> str:
    """Dry-run `workdir` under another config, then restore the tiny one; returns the plan."""
    write_config(workdir, config)
    try:
        return snakemake(workdir, "-n").stdout
    finally:
        write_config(workdir, TINY)


def summaries_equal(a, b) -> None:
    """Final results of two runs agree exactly: metrics files and every similarity value."""
    models = sorted((a / "results/models").rglob("metrics.json"))
    assert models
    for path in models:
        other = b / path.relative_to(a)
        want = path.read_text().replace(str(a), "")
        assert other.read_text().replace(str(b), "") == want, path
    sa = xr.load_dataset(a / "results/summary/similarity.nc", engine="h5netcdf")
    sb = xr.load_dataset(b / "results/summary/similarity.nc", engine="h5netcdf")
    np.testing.assert_array_equal(sa.similarity.values, sb.similarity.values)
    np.testing.assert_array_equal(sa.analysis.values, sb.analysis.values)
