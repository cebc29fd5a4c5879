"""Style gates: ruff, snakefmt and `snakemake --lint`; the conda environment matches the pins."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.slow
def test_snakemake_lint_passes():
    """Every rule declares its software (envs/robrep.yaml), so Snakemake's lint has nothing to say."""
    out = run(sys.executable, "-m", "snakemake", "--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


def pins(lines: list[str]) -> list[str]:
    return [line.strip().removeprefix("- ") for line in lines if "==" in line]


def test_the_conda_environment_pins_the_requirements():
    """envs/robrep.yaml (the conda route) installs exactly requirements.txt (the venv route)."""
    conda = yaml.safe_load((ROOT / "envs" / "robrep.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert pip == pins([line for line in requirements if not line.startswith("#")])
    assert "python=3.11" in conda["dependencies"]
