"""The SLURM profile on a real one-node SLURM cluster started by the test (root only)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_reruns import summaries_equal

from slurm_cluster import ClusterError, missing_binaries, start, stop
from workflow_helpers import TINY, make_workdir, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def reason_to_skip() -> str | None:
    if os.geteuid() != 0:
        if missing_binaries():
            return (
                f"SLURM is not installed ({', '.join(missing_binaries())}) and apt-get needs root"
            )
        return "starting munged, slurmctld and slurmd and writing /etc/slurm/slurm.conf need root"
    probe = (
        subprocess.run(["squeue", "-h"], capture_output=True) if shutil.which("squeue") else None
    )
    if probe is not None and probe.returncode == 0:
        return "a SLURM controller already answers here; not starting a second one"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = reason_to_skip()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="robrep-slurm-"))
    try:
        start(root)
    except ClusterError as err:
        stop(root)
        pytest.fail(f"could not start the test cluster: {err}")
    yield root
    stop(root)
    shutil.rmtree(root, ignore_errors=True)


def test_profile_runs_every_job_through_sbatch(cluster, completed_run, tmp_path):
    workdir = make_workdir(tmp_path, TINY)
    out = snakemake(
        workdir,
        "--workflow-profile",
        "profiles/slurm",
        "--slurm-init-seconds-before-status-checks",
        "2",
    )
    text = out.stdout + out.stderr
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", text)
    assert job_ids, text[-3000:]
    # Every rule but the target `all` ran as (or inside) a SLURM job.
    local = set(re.findall(r"localrule (\w+):", text))
    assert local <= {"all"}, local
    ran = set(re.findall(r"^\s*rule (\w+):", text, re.M))
    assert {"prepare_data", "train", "extract", "similarity", "aggregate", "figures"} <= ran
    # The similarity jobs went out grouped: fewer submissions than comparisons.
    assert "group_comparisons" in text
    states = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i %T"], capture_output=True, text=True, check=True
    ).stdout
    finished = dict(line.split() for line in states.splitlines())
    for job_id in job_ids:
        assert finished.get(job_id) == "COMPLETED", (job_id, states)
    summaries_equal(completed_run, workdir)
