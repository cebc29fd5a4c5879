"""What each rule script's imports load: the heavy packages a job pays for before its first line of
work. torch costs about two thirds of a CPU job's start, so only the jobs that run a network (or
compute on a GPU, where they import it when they get there) load it. A change that brings a heavy
package back into a job's imports fails here, naming the job and the package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow_scripts"
HEAVY = ("torch", "torchvision", "autoattack", "safetensors", "xarray", "zarr", "pandas")
HEAVY += ("matplotlib", "sklearn", "scipy")
NETWORK = {"torch", "safetensors"}  # a job that runs a network loads torch and its weights' reader
RECORDS = {"xarray", "zarr", "pandas"}  # a job that reads stores or writes netCDF

# The heavy packages each rule script's imports load; nothing else may appear.
EXPECTED = {
    "prepare_data": set(),  # torch only when it runs: the digits resize, image folders
    "train": NETWORK,
    "import_model": NETWORK,
    "attack": NETWORK | {"zarr"},
    "evaluate_autoattack": NETWORK,
    "extract": NETWORK | {"zarr"},
    "similarity": RECORDS,  # minibatch CKA and the full-data metrics on numpy/BLAS
    "probe": RECORDS | {"sklearn", "scipy"},  # sklearn's stratified folds
    "aggregate": RECORDS,
    "figures": RECORDS | {"matplotlib"},
    "report_pages": RECORDS,  # the summary netCDF's attributes
}


def imports_of(script: Path) -> list[str]:
    """The module-level import statements of a rule script, as source lines."""
    tree = ast.parse(script.read_text(), str(script))
    return [ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]


def heavy_loaded(lines: list[str]) -> set[str]:
    """The HEAVY packages in sys.modules after running `lines` in a fresh interpreter."""
    code = "\n".join(
        [f"import sys; sys.path.insert(0, {str(SCRIPTS)!r})", *lines]
        + [f"print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))"]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_every_rule_script_is_listed():
    scripts = {p.stem for p in SCRIPTS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("job", sorted(EXPECTED))
def test_a_job_imports_only_what_it_runs(job):
    loaded = heavy_loaded(imports_of(SCRIPTS / f"{job}.py"))
    assert loaded == EXPECTED[job], (
        f"{job}.py now loads {sorted(loaded - EXPECTED[job])} and no longer "
        f"{sorted(EXPECTED[job] - loaded)}"
    )


def test_verify_loads_no_heavy_package():
    """`robrep verify` checks checksums only: no torch, xarray or zarr."""
    assert heavy_loaded(["import robrep.pipeline.cli, robrep.pipeline.verify"]) == set()


def test_the_check_sees_a_heavy_import():
    assert heavy_loaded(["import robrep.store.extract"]) >= {"torch"}
