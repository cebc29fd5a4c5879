"""A compute plan before submission: `robrep plan` sums the job sizer's requests per rule, the
paper's grid fits an 8-GPU node and builds its DAG there, and a node without GPUs is refused."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from snakemake.utils import validate

from robrep.pipeline import cli
from robrep.pipeline import plan as rplan
from robrep.pipeline.config import (
    ConfigError,
    architectures_of,
    check_config,
    load_config,
    study_from_config,
)
from robrep.pipeline.jobs import JobSizer

from helpers.workflow import ROOT, TINY, job_counts, make_workdir, planned_jobs, snakemake

SCHEMA = ROOT / "config" / "schema.yaml"
PAPER = ROOT / "config" / "paper.yaml"
GPU_NODE = {"cores": 96, "mem_mb": 1_000_000, "max_runtime": 2880, "gpus": 8, "gpu_mem_mb": 80000}


def node_file(tmp_path, **node) -> str:
    path = tmp_path / f"node-{len(list(tmp_path.glob('node*')))}.yaml"
    path.write_text(yaml.safe_dump({"resources": {"node": node}}))
    return str(path)


def table(output: str) -> dict[str, list[str]]:
    """Rule -> its plan row's fields."""
    return {
        line.split()[0]: line.split()
        for line in output.splitlines()
        if re.match(r"^[a-z_]+\s+\d+\s", line)
    }


def test_plan_sums_what_the_job_sizer_requests(capsys):
    assert cli.main(["plan"]) == 0
    rows = table(capsys.readouterr().out)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    study, _ = load_config(
        config, yaml.safe_load(SCHEMA.read_text()), lambda c: validate(c, str(SCHEMA))
    )
    work = rplan.planned_work(config, study)
    sizer = JobSizer(config, study, work.comparisons)
    jobs = list(sizer.planned_jobs(work.attacked, work.stores, work.probed, work.autoattacked))
    for rule in {r for r, _ in jobs}:
        mine = [sizer.estimate(r, wc) for r, wc in jobs if r == rule]
        assert int(rows[rule][1]) == len(mine), rule
        hours = sum(e["runtime"] for e in mine) * sizer.threads(rule) / 60
        assert float(rows[rule][4]) == pytest.approx(hours, abs=0.05), rule
        assert rows[rule][3] == "0"  # device auto: no GPU asked
    assert rows["similarity"][1] == str(len(work.comparisons))


def test_the_paper_grid_fits_an_8_gpu_node(tmp_path, capsys):
    assert cli.main(["plan", "--configfile", str(PAPER), node_file(tmp_path, **GPU_NODE)]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    for rule in ("train", "attack", "extract", "similarity", "autoattack"):
        assert rows[rule][3] == "1", rule  # one GPU per job
        assert int(rows[rule][8]) <= GPU_NODE["gpu_mem_mb"], rule
    assert rows["probe"][3] == "0"
    assert "8 GPUs of 80000 MB" in out


def test_a_node_without_gpus_is_refused_naming_the_rule_and_the_setting(tmp_path, capsys):
    cpu_node = {k: v for k, v in GPU_NODE.items() if k not in ("gpus", "gpu_mem_mb")}
    assert cli.main(["plan", "--configfile", str(PAPER), node_file(tmp_path, **cpu_node)]) == 1
    err = capsys.readouterr().err
    assert "rule train computes on a GPU (device: cuda) but the node has none" in err
    assert "device: cpu" in err and "resources.node.gpus" in err
    small = {**GPU_NODE, "gpu_mem_mb": 4000}
    assert cli.main(["plan", "--configfile", str(PAPER), node_file(tmp_path, **small)]) == 1
    assert "MB of GPU memory" in capsys.readouterr().err


def test_plan_names_a_missing_file_and_a_bad_config(tmp_path, capsys):
    assert cli.main(["plan", "--configfile", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("architectures: [resnet50]\n")
    assert cli.main(["plan", "--configfile", str(bad)]) == 2
    assert "unknown architecture 'resnet50'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("seeds: [0,\n", "is not valid YAML"),
        ("- 0\n- 1\n", "holds a list, not a mapping of settings"),
        ("training: {epochs: -5}\n", "training.epochs: -5 is less than the minimum of 1"),
    ],
)
def test_plan_refuses_damaged_config_in_one_line(tmp_path, capsys, text, message):
    """Malformed YAML, a file that is not a mapping and a schema violation exit 2 with one
    message naming the file, not a traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert cli.main(["plan", "--configfile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err


def test_architectures_per_dataset():
    config = copy.deepcopy(TINY)
    config["datasets"] = ["digits", "cifar10"]
    config["architectures"] = {"digits": ["convnet"], "cifar10": ["wrn-10-1"]}
    study = study_from_config({**config, "activations": {"inputs": ["benign"]}})
    assert {(m.dataset, m.arch) for m in study.models} == {
        ("digits", "convnet"),
        ("cifar10", "wrn-10-1"),
    }
    assert architectures_of(config, "cifar10") == ["wrn-10-1"]
    assert architectures_of(TINY, "digits") == TINY["architectures"]
    with pytest.raises(ConfigError, match="architectures: 'mnist' is not one of the config's"):
        check_config({**config, "architectures": {"mnist": ["convnet"]}})


@pytest.mark.integration
def test_the_paper_grid_builds_its_dag_on_an_8_gpu_node(tmp_path):
    """snakemake -n on config/paper.yaml with an 8-GPU node: every job passes the start-up
    check as its resources are evaluated; GPU rules ask for a GPU, CPU rules for none."""
    workdir = make_workdir(tmp_path, TINY)
    out = snakemake(
        workdir, "-n", "--configfile", "config/paper.yaml", node_file(tmp_path, **GPU_NODE)
    ).stdout
    counts = job_counts(out)
    assert counts["train"] == 3 * 10 * 3 + 2 * 10 * 3  # WRNs on CIFAR-10, ResNet-18 elsewhere
    gpu = re.compile(r"\bgpu=1\b")
    for block in re.split(r"\n(?=rule \w+:)", out):
        rule = re.match(r"rule (\w+):", block.strip())
        if rule and rule.group(1) in ("train", "attack", "extract", "similarity", "autoattack"):
            assert gpu.search(block), block
        elif rule and rule.group(1) in ("probe", "prepare_data", "aggregate", "figures"):
            assert not gpu.search(block), block
    assert planned_jobs(out)


@pytest.mark.integration
def test_a_dry_run_stops_on_a_gpu_job_the_node_cannot_run(tmp_path):
    workdir = make_workdir(tmp_path, {**TINY, "device": "cuda"})
    cpu_node = node_file(tmp_path, cores=8, mem_mb=64000)
    refused = snakemake(workdir, "-n", "--configfile", cpu_node, check=False)
    assert refused.returncode != 0
    text = refused.stdout + refused.stderr
    assert "computes on a GPU (device: cuda) but the node has none" in text, text[-3000:]


def checked(config: dict):
    schema = yaml.safe_load(SCHEMA.read_text())
    return load_config(config, schema, lambda c: validate(c, str(SCHEMA)))


def test_a_metric_fixed_by_construction_is_refused():
    config = copy.deepcopy(TINY)
    config["similarity"] = {"metrics": ["minibatch_cka", "pwcca"]}
    with pytest.raises(ConfigError) as err:
        checked(copy.deepcopy(config))
    text = str(err.value)
    for part in ("'pwcca' is 1 by construction for convnet on digits", "N - 1 = 63", "drop pwcca"):
        assert part in text, text
    # Pooled to 1 x 1 the block features are their channels (D <= 64), below N - 1 = 127: the
    # metric means something.
    config["activations"] = {**config["activations"], "pool": 1, "n_examples": 128}
    checked(copy.deepcopy(config))
    # Metrics not built on canonical correlations are never refused for D >= N.
    config = copy.deepcopy(TINY)
    config["similarity"] = {"metrics": ["minibatch_cka", "svcca", "linear_cka_debiased"]}
    checked(config)
