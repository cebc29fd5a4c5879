"""Style gates: ruff, snakefmt and `snakemake --lint` (only the documented conda-environment note)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
PY_DIRS = ["workflow_scripts", "tests", "benchmarks"]


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"{name} is not installed")
        return found
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_and_format():
    check = run(tool("ruff"), "check", *PY_DIRS)
    assert check.returncode == 0, check.stdout
    fmt = run(tool("ruff"), "format", "--check", *PY_DIRS)
    assert fmt.returncode == 0, fmt.stdout


def test_snakefmt():
    out = run(tool("snakefmt"), "--check", "Snakefile", "rules")
    assert out.returncode == 0, out.stderr


def test_snakemake_lint_only_conda_note():
    """Rules carry no conda environment: the project installs through its venv (see README)."""
    out = run(sys.executable, "-m", "snakemake", "--lint")
    text = out.stdout + out.stderr
    lints = re.findall(r"^\s+\* (.+?):$", text, re.M)
    assert lints, text
    assert set(lints) == {"Specify a conda environment or container for each rule."}, text
