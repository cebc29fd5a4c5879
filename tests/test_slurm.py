"""The SLURM profile on a real one-node SLURM cluster started by the test (root only)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers.slurm_cluster import ClusterError, missing_binaries, start, stop
from helpers.workflow import TINY, make_workdir, snakemake, summaries_equal

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


FAKE_CUDA = Path(__file__).parent / "helpers" / "fake_cuda"  # its sitecustomize: see there
FAKE_GPU_ENV = {
    "ROBREP_FAKE_GPUS": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(FAKE_CUDA), os.environ.get("PYTHONPATH")])),
}


def test_profile_runs_every_job_through_sbatch(cluster, completed_run, tmp_path):
    """The tiny study under `device: cuda` on a node with (fake) GPUs: every GPU rule's job asks
    SLURM for a GPU and gets one (a job without one fails: `helpers/fake_cuda`), every CPU
    rule's job asks for none, and the results equal the local run's."""
    # Exactly the command in the profile's header: no --cores, nothing else.
    workdir = make_workdir(tmp_path, {**TINY, "device": "cuda"})
    header = (workdir / "profiles" / "slurm" / "config.yaml").read_text().splitlines()[1]
    command = header.lstrip("# ").split()
    assert command == ["snakemake", "--workflow-profile", "profiles/slurm"], header
    out = snakemake(workdir, *command[1:], cores=None, timeout=1200, env=FAKE_GPU_ENV)
    text = out.stdout + out.stderr
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", text)
    assert job_ids, text[-3000:]
    # Every rule but the target `all` ran as (or inside) a SLURM job.
    local = set(re.findall(r"localrule (\w+):", text))
    assert local <= {"all"}, local
    ran = set(re.findall(r"^\s*rule (\w+):", text, re.M))
    assert {"prepare_data", "train", "extract", "similarity", "aggregate", "figures"} <= ran
    # The similarity jobs went out grouped: fewer submissions than comparisons, each sized to
    # fit the one node (its CPUs and memory), not the sum of all its members.
    assert "group_comparisons" in text
    states = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%C|%m|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {line.split("|")[0]: line.split("|")[1:] for line in states.splitlines()}
    for job_id in job_ids:
        assert jobs[job_id][0] == "COMPLETED", (job_id, states)
    node_cpus, node_mem = node_size()
    groups = [jobs[j] for j in job_ids if jobs[j][3].startswith("rule_comparisons")]
    assert groups, states
    for _, cpus, mem, _ in groups:
        assert int(cpus) <= node_cpus and int(mem.rstrip("M")) <= node_mem, (cpus, mem, states)
    asked = {j: gpu_request(j) for j in job_ids}
    by_rule: dict[str, set[int]] = {}
    for j in job_ids:
        rule = re.match(r"rule_([a-z_]+?)(?:_wildcards|$)", jobs[j][3])
        assert rule, (j, jobs[j])
        name = "comparisons" if rule.group(1).startswith("comparisons") else rule.group(1)
        by_rule.setdefault(name, set()).add(asked[j])
    gpu_rules = {"train", "attack", "autoattack", "extract", "comparisons"}
    cpu_rules = {"prepare_data", "probe", "aggregate", "figures", "report_pages"}
    assert set(by_rule) <= gpu_rules | cpu_rules, by_rule
    assert gpu_rules - {"comparisons"} <= set(by_rule) and cpu_rules <= set(by_rule), by_rule
    for rule, gpus in by_rule.items():
        if rule in cpu_rules:
            assert gpus == {0}, (rule, gpus)
        else:  # one GPU each; a group of comparisons at most the node's
            assert gpus and 0 not in gpus and max(gpus) <= node_gpus(), (rule, gpus)
    summaries_equal(completed_run, workdir)


def gpu_request(job_id: str) -> int:
    """The GPUs a SLURM job asked for, from `scontrol show job` (TresPerJob / TresPerNode)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"TresPer(?:Job|Node|Task)=\S*gres[:/]gpu[:=](\d+)", shown)
    return int(found.group(1)) if found else 0


def node_gpus() -> int:
    gres = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"gpu:(?:\w+:)?(\d+)", gres)
    return int(found.group(1)) if found else 0


def node_size() -> tuple[int, int]:
    cpus, mem = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    return int(cpus), int(mem)


def test_a_job_slurm_can_never_start_ends_the_run(cluster, tmp_path):
    # 64 CPUs for one task on a node with fewer: SLURM keeps it pending (PartitionConfig).
    workdir = make_workdir(tmp_path, {**TINY, "resources": {"pending_check_seconds": 1}})
    # Started as a script's background job is: with SIGINT ignored, which Snakemake inherits (the
    # watch's interrupt was lost then, and the run hung).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = snakemake(
            workdir,
            "--workflow-profile",
            "profiles/slurm",
            "--set-resources",
            "prepare_data:cpus_per_task=64",
            cores=None,
            check=False,
            timeout=300,
        )
    except subprocess.TimeoutExpired as err:  # a hang: say what SLURM saw
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%i|%T|%r|%k|%C|%V|%Z"], capture_output=True, text=True
        ).stdout
        out, log = ((s or b"").decode(errors="replace")[-3000:] for s in (err.stdout, err.stderr))
        pytest.fail(f"no end in 300 s; squeue:\n{queue}\nstdout:\n{out}\nstderr:\n{log}")
    finally:
        signal.signal(signal.SIGINT, previous)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert re.search(r"SLURM job \d+ \(rule prepare_data\) can never start", text), text[-3000:]
    assert "PartitionConfig" in text and "64 CPUs" in text and "set-resources" in text
    pending = subprocess.run(
        ["squeue", "-h", "-t", "PD", "-o", "%Z"], capture_output=True, text=True, check=True
    ).stdout
    assert str(workdir) not in pending  # the run cancelled what it had submitted


def test_a_job_no_node_holds_is_refused_before_submission(cluster, tmp_path):
    config = {**TINY, "resources": {"node": {"cores": 1, "mem_mb": 100}}}
    workdir = make_workdir(tmp_path, config)
    out = snakemake(
        workdir, "--workflow-profile", "profiles/slurm", cores=None, check=False, timeout=600
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "submitted with SLURM jobid" not in text
    assert re.search(r"rule \w+ asks for \d+ MB of memory, more than one node gives", text), text[
        -3000:
    ]
    assert "config resources.node" in text


def test_a_gpu_job_on_a_node_without_gpus_is_refused_before_submission(cluster, tmp_path):
    """`device: cuda` where the node has no GPU: nothing is submitted, and the message names the
    rule and the settings to change."""
    node = {"cores": 2, "mem_mb": 20000, "gpus": 0}
    workdir = make_workdir(tmp_path, {**TINY, "device": "cuda", "resources": {"node": node}})
    out = snakemake(
        workdir, "--workflow-profile", "profiles/slurm", cores=None, check=False, timeout=600
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "submitted with SLURM jobid" not in text
    assert re.search(r"rule \w+ computes on a GPU \(device: cuda\) but the node has none", text), (
        text[-3000:]
    )
    assert "resources.node.gpus" in text and "device: cpu" in text
