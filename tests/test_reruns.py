"""Incremental reruns: what a config change, a deleted store or a killed run schedules again."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers.workflow import (
    TINY,
    dry_run_with,
    job_counts,
    make_workdir,
    planned_jobs,
    snakemake,
    summaries_equal,
    write_config,
)

pytestmark = pytest.mark.integration


def assert_only_one_model_planned(out: str, method_id: str) -> None:
    """The plan trains, extracts and compares one model of `method_id`, plus aggregation."""
    assert job_counts(out) == {
        "train": 1,
        "attack": 1,
        # final benign and pgd, epoch1, best, its transfer-standard store and the standard
        # model's store on its adversarial examples
        "extract": 6,
        # cross_layer 2 + benign_vs_adversarial 3 + epochs 2 + robust_vs_standard 2 + transfer 2
        "similarity": 11,
        "probe": 1,
        "autoattack": 1,
        "aggregate": 1,
        "figures": 1,
        "report_pages": 1,
        "all": 1,
    }
    for job in planned_jobs(out):
        if job["rule"] in ("train", "extract", "attack", "probe", "autoattack"):
            # The one job of another model: the standard model on the new one's examples.
            seen = f"method_id={method_id}" in job["wildcards"]
            assert seen or f"inputs=transfer-{method_id}" in job["wildcards"], job
        if job["rule"] == "similarity":
            assert method_id in job["wildcards"], job


def test_changed_method_parameters_rerun_only_that_method(completed_run):
    config = copy.deepcopy(TINY)
    config["methods"][1]["steps"] = 3  # same id pgd-linf-eps0.1, other training
    out = dry_run_with(completed_run, config)
    assert_only_one_model_planned(out, "pgd-linf-eps0.1")


def plan_without(workdir, path: str) -> str:
    """The dry-run plan with `path` (under `workdir`) moved away; it is put back after."""
    backup = workdir / "moved-away.bak"
    shutil.move(workdir / path, backup)
    try:
        return snakemake(workdir, "-n").stdout
    finally:
        shutil.move(backup, workdir / path)


def test_deleted_store_rebuilds_it_and_its_comparisons(completed_run):
    out = plan_without(
        completed_run, "results/activations/digits/convnet/standard/seed0/final/pgd.zarr"
    )
    counts = job_counts(out)
    # cross_layer, benign_vs_adversarial, robust_vs_standard (pgd) and transfer read it
    assert counts == {
        "extract": 1,
        "similarity": 4,
        "aggregate": 1,
        "figures": 1,
        "report_pages": 1,
        "all": 1,
    }
    similarity = [j["output"] for j in planned_jobs(out) if j["rule"] == "similarity"]
    assert all("standard.seed0.final.pgd" in path for path in similarity)


def test_deleted_adversarial_examples_rebuild_them_and_their_readers(completed_run):
    """The standard model's stored adversarial examples feed its pgd store and the robust
    model's transfer store: deleting them re-runs one attack, those two stores and what reads
    them, nothing else."""
    out = plan_without(
        completed_run, "results/adversarial/digits/convnet/standard/seed0/final.zarr"
    )
    counts = job_counts(out)
    assert counts == {
        "attack": 1,
        "extract": 2,
        "similarity": 5,
        "aggregate": 1,
        "figures": 1,
        "report_pages": 1,
        "all": 1,
    }
    stores = sorted(j["output"].split("/")[-1] for j in planned_jobs(out) if j["rule"] == "extract")
    assert stores == ["pgd.zarr", "transfer-standard.zarr"]


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(completed_run, tmp_path):
    """Kill Snakemake and its jobs with SIGKILL while training runs; the rerun completes and its
    final results equal the uninterrupted run's."""
    workdir = make_workdir(tmp_path, TINY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        partial = list(workdir.glob("results/models/*/*/*/*/.partial/state.pt"))
        if partial:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "no training job reached its first epoch"
    assert not (workdir / "results/summary/similarity.nc").exists()
    # A model whose training was killed has resume state but no metrics.json.
    assert any(not (state.parents[1] / "metrics.json").exists() for state in partial)
    snakemake(workdir, "--unlock")  # a SIGKILLed Snakemake leaves its lock behind
    snakemake(workdir, "--rerun-incomplete")
    summaries_equal(completed_run, workdir)
    out = snakemake(workdir, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_adding_an_epsilon_schedules_only_its_jobs(completed_run):
    config = copy.deepcopy(TINY)
    config["methods"].append({"method": "pgd", "norm": "linf", "eps": "1/5", "steps": 2})
    out = dry_run_with(completed_run, config)
    assert_only_one_model_planned(out, "pgd-linf-eps1_5")


def test_adding_an_architecture_schedules_only_its_jobs(completed_run):
    """A wider convnet: its two models are trained, attacked, extracted (with the transfer stores
    between them), compared, probed and attacked with AutoAttack; nothing of convnet reruns."""
    config = copy.deepcopy(TINY)
    config["architectures"] = ["convnet", "convnet-2"]
    out = dry_run_with(completed_run, config)
    counts = job_counts(out)
    assert counts["train"] == 2 and counts["attack"] == 2 and counts["extract"] == 10
    # 16 comparisons of the new models, as TINY's, + width_depth convnet x convnet-2 for each
    assert counts["similarity"] == 18
    assert counts["probe"] == 2 and counts["autoattack"] == 2
    for job in planned_jobs(out):
        if job["rule"] in ("train", "extract", "attack", "probe", "autoattack"):
            assert "arch=convnet-2" in job["wildcards"], job
        if job["rule"] == "similarity":
            assert "convnet-2" in job["wildcards"], job


@pytest.mark.parametrize(
    "key, value",
    [
        ("metrics", ["minibatch_cka", "linear_cka_debiased", "svcca", "procrustes"]),
        ("intervals", False),
        ("seed", 3),
        ("rbf_sigma", 0.5),
        ("svcca_variance", 0.9),
    ],
)
def test_similarity_setting_plans_no_extraction(completed_run, key, value):
    """A similarity setting reruns the comparisons and what follows them, never a store."""
    config = copy.deepcopy(TINY)
    config["similarity"][key] = value
    counts = job_counts(dry_run_with(completed_run, config))
    assert "extract" not in counts and "train" not in counts and "prepare_data" not in counts
    assert counts["similarity"] == 16 and counts["aggregate"] == 1 and "probe" not in counts
    assert "attack" not in counts


@pytest.mark.parametrize(
    "change", [{"n_examples": 16}, {"version": ["apgd-ce"]}, {"batch_size": 8}]
)
def test_autoattack_setting_reruns_only_autoattack(completed_run, change):
    """An AutoAttack setting reruns AutoAttack (one per model) and the summary: never training,
    whose evaluation attack is the same."""
    config = copy.deepcopy(TINY)
    config["evaluation"]["autoattack"].update(change)
    counts = job_counts(dry_run_with(completed_run, config))
    assert counts == {"autoattack": 2, "aggregate": 1, "figures": 1, "report_pages": 1, "all": 1}


def test_a_dataset_s_evaluation_attack_reruns_that_dataset(completed_run):
    """`evaluation.datasets.digits` restating the shared attack changes no model, example or
    store (only the summary, which records the config as given); a different step count there
    retrains digits' models and recrafts their examples."""
    same = copy.deepcopy(TINY)
    same["evaluation"]["datasets"] = {"digits": {"eps": 0.1, "steps": 3}}
    counts = job_counts(dry_run_with(completed_run, same))
    assert counts == {"aggregate": 1, "figures": 1, "report_pages": 1, "all": 1}
    changed = copy.deepcopy(TINY)
    changed["evaluation"]["datasets"] = {"digits": {"steps": 4}}
    counts = job_counts(dry_run_with(completed_run, changed))
    assert counts["train"] == 2 and counts["attack"] >= 2 and counts["autoattack"] == 2


@pytest.mark.parametrize("key, value", [("folds", 3), ("seed", 1), ("n_examples", 40)])
def test_probe_setting_reruns_only_the_probes(completed_run, key, value):
    """A probe setting reruns the probes (one per model) and the summary, nothing upstream."""
    config = copy.deepcopy(TINY)
    config["probes"] = {key: value}
    counts = job_counts(dry_run_with(completed_run, config))
    assert counts == {"probe": 2, "aggregate": 1, "figures": 1, "report_pages": 1, "all": 1}


@pytest.mark.parametrize(
    "change",
    [
        {"resources": {"gflops": 5000}},
        {"threads": {"train": 2, "extract": 2, "similarity": 2}},
        {"device": "cpu"},
    ],
)
def test_execution_settings_plan_nothing(completed_run, change):
    """Where and how fast jobs run (resources, threads, device) changes no output."""
    write_config(completed_run, dict(copy.deepcopy(TINY), **change))
    try:
        out = snakemake(completed_run, "-n")
    finally:
        write_config(completed_run, TINY)
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-2000:]


@pytest.mark.parametrize("key, value", [("passes", 3), ("cka_batch_size", 16)])
def test_minibatch_partition_is_a_store_setting(completed_run, key, value):
    """The CKA batches and passes are made at extraction: changing them rebuilds every store and
    comparison, and trains nothing."""
    config = copy.deepcopy(TINY)
    config["activations"][key] = value
    counts = job_counts(dry_run_with(completed_run, config))
    assert "train" not in counts and counts["extract"] == 10 and counts["similarity"] == 16
    assert "attack" not in counts  # the adversarial examples do not depend on the minibatches


def test_n_examples_above_the_test_split_plans_as_the_split(completed_run):
    """1e9 examples on digits' 359-example test split: a warning naming the size used, and the
    same stores, params and job resources as asking for 359."""
    plans = {}
    for n in (10**9, 359):
        config = copy.deepcopy(TINY)
        config["activations"]["n_examples"] = n
        write_config(completed_run, config)
        try:
            plans[n] = snakemake(completed_run, "-n")
        finally:
            write_config(completed_run, TINY)
    warning = "activations.n_examples: 1000000000 is more than the 359 examples of the digits test"
    assert warning in plans[10**9].stdout + plans[10**9].stderr
    assert warning not in plans[359].stdout + plans[359].stderr

    def resources(out):  # each job's resources as a set: Snakemake lists them in any order
        lines = re.findall(r"^\s+resources: (.*)$", out.stdout, re.M)
        return sorted(", ".join(sorted(line.split(", "))) for line in lines)

    assert resources(plans[10**9]) == resources(plans[359])
    assert any("mem_mb" in line for line in resources(plans[359]))
