"""Job sizing (robrep.pipeline.resources estimates, robrep.pipeline.jobs.JobSizer requests) on
the tiny config, without Snakemake running a job."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from robrep.learn.cost import GPU_RESERVED_MB, model_cost, pooled_size
from robrep.learn.models import build_model
from robrep.pipeline import resources as rres
from robrep.pipeline.cluster import NodeCapacity, ResourceRequestError
from robrep.pipeline.config import load_config
from robrep.pipeline.jobs import GPU_RULES, GPU_SETTINGS, SIZE_SETTINGS, JobSizer
from robrep.study.analyses import comparisons

from helpers.workflow import TINY

SCHEMA_PATH = Path(__file__).parents[1] / "config" / "schema.yaml"


def sizer(**changes) -> JobSizer:
    config = copy.deepcopy(TINY)
    config.update(changes)
    study, _ = load_config(
        config, yaml.safe_load(SCHEMA_PATH.read_text()), lambda c: validate(c, str(SCHEMA_PATH))
    )
    return JobSizer(config, study, comparisons(study, config["analyses"]))


MODEL = SimpleNamespace(dataset="digits", arch="convnet", method_id="standard", seed="0")


def test_model_cost_counts_the_networks_parameters():
    cost = model_cost("convnet", 1, 8, 10)
    model = build_model("convnet", 1, 10, [0.5], [0.5])
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.flops_per_image > 0 and cost.activation_values_per_image > 0
    assert cost.probe_layers == len(model.probe_layers("blocks"))
    none = model_cost("convnet", 1, 8, 10, features="none")
    assert none.feature_layers == 0 and none.feature_values == 0


def test_pooling_shrinks_only_large_feature_maps():
    assert pooled_size((16, 32, 32), 8) == 16 * 8 * 8
    assert pooled_size((16, 4, 4), 8) == 16 * 4 * 4
    assert pooled_size((100,), 8) == 100


def test_store_size_is_grams_plus_features():
    cost = model_cost("convnet", 1, 8, 10)
    size = rres.store_size(cost, n_examples=100, cka_batch_size=32, passes=2, value_bytes=2)
    assert size.gram_bytes == 2 * 4 * 32 * 33 // 2 * cost.probe_layers * 4  # 4 batches, 2 passes
    assert size.feature_bytes == 100 * cost.feature_values * 2
    assert size.total == size.gram_bytes + size.feature_bytes


def test_estimates_grow_with_the_work():
    geo = rres.dataset_geometry("digits", {"image_size": 8})
    cost = model_cost("convnet", 1, 8, 10)
    short = rres.train_resources(geo, cost, 2, 128, 0, 1, 1.0, 0.15)
    long = rres.train_resources(geo, cost, 200, 128, 7, 1, 1.0, 0.15)
    assert long["runtime"] > short["runtime"] and long["mem_mb"] == short["mem_mb"]
    few = rres.similarity_resources(cost, cost, 100, 32, 1, False, 1.0)
    full = rres.similarity_resources(cost, cost, 100, 32, 1, True, 1.0)
    assert full["mem_mb"] > few["mem_mb"]
    plus = rres.autoattack_resources(geo, cost, 100, "plus", 20, 250, 1.0)
    standard = rres.autoattack_resources(geo, cost, 100, "standard", 20, 250, 1.0)
    assert plus["runtime"] >= standard["runtime"]


def test_every_rule_of_the_study_is_sized():
    s = sizer()
    jobs = list(s.planned_jobs([], [], [], []))
    rules = {rule for rule, _ in jobs}
    assert rules == {"train", "similarity"}
    assert [r for r, _ in jobs].count("train") == len(s.study.models) == 2
    for rule, wildcards in jobs:
        est = s.estimate(rule, wildcards)
        assert est["mem_mb"] >= 1500 and est["runtime"] >= 5, (rule, est)
    assert set(SIZE_SETTINGS) == set(s._estimators)


def test_the_permutation_null_is_in_the_similarity_runtime():
    """`permutations: 1e9` was ignored by the estimates (issue 28): a similarity job's runtime
    grows with its null's draws."""

    def runtime(permutations):
        s = sizer(similarity={**TINY["similarity"], "permutations": permutations})
        jobs = [(r, w) for r, w in s.planned_jobs([], [], [], []) if r == "similarity"]
        return sum(s.estimate(r, w)["runtime"] for r, w in jobs)

    assert runtime(0) < runtime(10**6) < runtime(10**9)


def test_an_unknown_rule_is_named_with_the_sized_ones():
    with pytest.raises(ValueError, match=r"no job sizing for rule 'figures'; sized rules: train"):
        sizer().estimate("figures", MODEL)


def test_retries_scale_within_the_node():
    s = sizer()
    first = s.request("train", "mem_mb", MODEL, 1, None)
    assert s.request("train", "mem_mb", MODEL, 3, None) == 3 * first
    node = NodeCapacity(cores=4, mem_mb=first * 2, max_runtime=60, source="test")
    assert s.request("train", "mem_mb", MODEL, 3, node) == first * 2  # capped at the node
    runtime = s.request("train", "runtime", MODEL, 100, node)
    assert runtime == 60


def test_a_job_no_node_holds_is_refused_naming_the_settings():
    s = sizer()
    tiny_node = NodeCapacity(cores=1, mem_mb=100, max_runtime=None, source="config resources.node")
    with pytest.raises(ResourceRequestError, match="rule train asks for .* MB of memory") as err:
        s.check_every_job(s.planned_jobs([], [], [], []), tiny_node)
    assert SIZE_SETTINGS["train"] in str(err.value)
    s.check_every_job(s.planned_jobs([], [], [], []), None)  # locally: nothing to refuse


def test_the_attack_batch_is_its_own_setting_not_the_cka_partition():
    for cka_batch_size in (32, 100, 150):
        config = {"batch_size": 100, "cka_batch_size": cka_batch_size}
        assert sizer(activations=config).attack_batch == 100
    assert sizer(activations={"batch_size": 10, "chunk_rows": 64}).attack_batch == 10


def test_probe_and_autoattack_examples_are_clamped():
    s = sizer(probes={"n_examples": 10, "folds": 2})
    assert s.probe_examples("digits") == 10
    assert s.autoattack_examples("digits") == min(s.examples["digits"], 32)


def test_device_cuda_asks_each_gpu_rule_for_a_gpu_and_sizes_its_gpu_memory():
    cpu, gpu = sizer(), sizer(device="cuda")
    assert {rule: cpu.gpus(rule) for rule in SIZE_SETTINGS} == dict.fromkeys(SIZE_SETTINGS, 0)
    assert {r for r in SIZE_SETTINGS if gpu.gpus(r)} == GPU_RULES == set(GPU_SETTINGS)
    assert gpu.gpus("probe") == 0  # numpy on the CPU
    assert sizer(device="auto").gpus("train") == 0  # auto asks for none
    wildcards = SimpleNamespace(**vars(MODEL), checkpoint="final", inputs="pgd")
    for rule, wc in (("train", MODEL), ("attack", wildcards), ("extract", wildcards)):
        on_cpu, on_gpu = cpu.estimate(rule, wc), gpu.estimate(rule, wc)
        assert "gpu_mem_mb" not in on_cpu and on_gpu["gpu"] == 1, rule
        # The activations of a pass live on the GPU, not on the host.
        assert on_gpu["mem_mb"] < on_cpu["mem_mb"] and on_gpu["runtime"] == on_cpu["runtime"]
        assert on_gpu["gpu_mem_mb"] > GPU_RESERVED_MB
    train = gpu.estimate("train", MODEL)["gpu_mem_mb"]
    bigger = sizer(device="cuda", training={**TINY["training"], "batch_size": 1024})
    assert bigger.estimate("train", MODEL)["gpu_mem_mb"] > train  # a training step is not split


def test_numpy_work_runs_at_the_cpu_rate_and_networks_at_the_device_rate():
    slow_cpu = {"gflops": 20, "cpu_gflops": 0.001}
    s, base = sizer(resources=slow_cpu), sizer()
    analysis, dataset, pair = next(iter(s.comparisons))
    sim = SimpleNamespace(analysis=analysis, dataset=dataset, pair=pair)
    assert s.estimate("train", MODEL)["runtime"] == base.estimate("train", MODEL)["runtime"]
    assert s.estimate("similarity", sim)["runtime"] > base.estimate("similarity", sim)["runtime"]
    fast_gpu = sizer(device="cuda", resources={"gflops": 1e-3, "cpu_gflops": 20})
    assert fast_gpu.estimate("train", MODEL)["runtime"] > base.estimate("train", MODEL)["runtime"]


def test_a_gpu_job_on_a_node_without_gpus_is_refused_before_anything_runs():
    s = sizer(device="cuda")
    cpu_node = NodeCapacity(64, 10**6, None, "config resources.node", gpus=0)
    with pytest.raises(ResourceRequestError, match="rule train computes on a GPU"):
        s.check_every_job(s.planned_jobs([], [], [], []), cpu_node)
    gpu_node = NodeCapacity(64, 10**6, None, "config resources.node", gpus=1, gpu_mem_mb=2000)
    s.check_every_job(s.planned_jobs([], [], [], []), gpu_node)
    small = NodeCapacity(64, 10**6, None, "config resources.node", gpus=1, gpu_mem_mb=1000)
    with pytest.raises(ResourceRequestError, match="GPU memory.*lower training.batch_size"):
        s.check_every_job(s.planned_jobs([], [], [], []), small)
    sizer().check_every_job(sizer().planned_jobs([], [], [], []), cpu_node)  # cpu: no GPU asked
