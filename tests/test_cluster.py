"""Cluster fitting: node capacity from sinfo or config, requests no node holds, and the watch that
ends a run SLURM can never schedule."""

from __future__ import annotations

import threading

import pytest

from robrep.pipeline import cluster


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("infinite", None),
        ("UNLIMITED", None),
        ("30", 30),
        ("1:30", 2),  # minutes:seconds, rounded up
        ("2:00:00", 120),
        ("1-00:00:00", 1440),
        ("2-03:04:05", 2 * 1440 + 3 * 60 + 5),
    ],
)
def test_parse_time_limit(text, minutes):
    assert cluster.parse_time_limit(text) == minutes


def test_parse_sinfo_picks_the_largest_node():
    text = "2|1800|infinite\n16|64000|2-00:00:00\n16|128000+|1:00:00\nnoise\n"
    node = cluster.parse_sinfo(text)
    assert (node.cores, node.mem_mb) == (16, 128000)
    assert node.max_runtime is None  # one partition has no limit
    assert cluster.parse_sinfo("4|8000|1:00:00\n4|8000|2:00:00\n").max_runtime == 120
    assert cluster.parse_sinfo("") is None


def test_node_capacity_prefers_the_config():
    node = cluster.node_capacity({"cores": 4, "mem_mb": 8000}, ask_slurm=True)
    assert (node.cores, node.mem_mb, node.source) == (4, 8000, "config resources.node")
    assert (node.gpus, node.gpu_mem_mb) == (0, None)  # a node described without GPUs has none
    gpu = cluster.node_capacity({"cores": 4, "mem_mb": 8000, "gpus": 2, "gpu_mem_mb": 8}, True)
    assert (gpu.gpus, gpu.gpu_mem_mb) == (2, 8)
    assert cluster.node_capacity(None, ask_slurm=False) is None


def request(mem_mb: int, runtime: int, **gpu: int) -> dict[str, int]:
    return {"mem_mb": mem_mb, "runtime": runtime, **gpu}


def test_check_request_names_rule_request_node_and_setting():
    node = cluster.NodeCapacity(2, 4000, 60, "config resources.node")
    cluster.check_request("train", request(3999, 60), node, "training.batch_size")
    cluster.check_request("train", request(10**9, 10**9), None, "training.batch_size")
    with pytest.raises(cluster.ResourceRequestError) as err:
        cluster.check_request("similarity", request(5000, 90), node, "activations.n_examples")
    text = str(err.value)
    for part in ("rule similarity", "5000 MB", "90 min", "4000 MB", "activations.n_examples"):
        assert part in text, text


def test_a_gpu_job_needs_a_node_with_a_gpu_and_room_on_it():
    gpu_job = request(1000, 10, gpu=1, gpu_mem_mb=30000)
    unknown = cluster.NodeCapacity(8, 64000, None, "sinfo without gres")  # GPUs not said
    cluster.check_request("train", gpu_job, unknown, "training.epochs")
    no_gpu = cluster.NodeCapacity(8, 64000, None, "config resources.node", gpus=0)
    with pytest.raises(cluster.ResourceRequestError) as err:
        cluster.check_request("train", gpu_job, no_gpu, "training.epochs")
    for part in ("rule train computes on a GPU (device: cuda)", "node has none", "0 GPUs"):
        assert part in str(err.value), err.value
    cluster.check_request("probe", request(1000, 10), no_gpu, "probes.n_examples")  # a CPU rule
    small = cluster.NodeCapacity(8, 64000, None, "config resources.node", 1, 24000)
    with pytest.raises(cluster.ResourceRequestError) as err:
        cluster.check_request("train", gpu_job, small, "training.epochs", "training.batch_size")
    text = str(err.value)
    for part in ("30000 MB of GPU memory", "1 GPUs of 24000 MB", "lower training.batch_size"):
        assert part in text, text
    big = cluster.NodeCapacity(8, 64000, None, "config resources.node", 8, 80000)
    cluster.check_request("train", gpu_job, big, "training.epochs", "training.batch_size")


@pytest.mark.parametrize(
    "gres, gpus",
    [("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2), ("gpu:a100:2,gpu:v100:1,mps:100", 3), ("(null)", 0)],
)
def test_gres_gpus(gres, gpus):
    assert cluster.gres_gpus(gres) == gpus


def test_parse_sinfo_reads_the_gpus_from_gres():
    node = cluster.parse_sinfo("64|512000|2-00:00:00|(null)\n32|256000|2-00:00:00|gpu:a100:4\n")
    assert (node.cores, node.mem_mb, node.gpus) == (64, 512000, 4)  # the most GPUs of any node
    assert cluster.parse_sinfo("4|8000|1:00:00\n").gpus is None  # no gres column: not said


SQUEUE = "\n".join(
    [
        "41|PartitionConfig|rule_comparisons_similarity|20|31000M|1:00:00|2026-11-24T10:00:05|/w",
        "42|Resources|rule_train_wildcards_x|1|2000M|30:00|2026-11-24T10:00:06|/w",
        "43|(ReqNodeNotAvail, UnavailableNodes:n1)|rule_extract|1|2000M|30:00|"
        "2026-11-24T10:00:07|/w",
        "44|PartitionConfig|rule_train|64|2000M|30:00|2026-11-24T10:00:08|/elsewhere",
        "40|PartitionConfig|rule_train|64|2000M|30:00|2026-11-24T09:00:00|/w",
    ]
)


def test_parse_squeue_keeps_this_runs_jobs_and_impossible_ones():
    jobs = cluster.parse_squeue(SQUEUE, "/w/", since="2026-11-24T10:00:00")
    assert [j.job_id for j in jobs] == ["41", "42", "43"]  # not another dir, not an older run
    stuck = cluster.impossible(jobs)
    assert [j.job_id for j in stuck] == ["41", "43"]  # "Resources" only waits
    assert stuck[0].rule == "comparisons_similarity"
    assert cluster.parse_squeue(SQUEUE, "/w")[1].rule == "train"
    text = stuck[0].explain()
    for part in ("SLURM job 41", "comparisons_similarity", "PartitionConfig", "20 CPUs", "31000M"):
        assert part in text, text
    assert "group-components" in text and "resources.node" in text


def test_pending_watch_reports_once_after_confirmation():
    polls = []
    called = []
    done = threading.Event()

    def query():
        polls.append(1)
        # the impossible job appears on the second poll; a transient one never stays
        return SQUEUE.replace("2026-11-24T10:00", "2999-01-01T00:00") if len(polls) >= 2 else ""

    def on_stuck(messages):
        called.append(messages)
        done.set()

    watch = cluster.PendingWatch("/w", on_stuck, interval=0.01, confirm=2, query=query)
    watch.start()
    assert done.wait(5)
    watch.join(5)
    assert len(called) == 1 and len(polls) == 3  # seen on polls 2 and 3, then stopped
    assert [m.split()[2] for m in called[0]] == ["41", "43"]


def test_pending_watch_stops_quietly():
    watch = cluster.PendingWatch("/w", lambda m: None, interval=0.01, query=lambda: "")
    watch.start()
    watch.stop()
    watch.join(5)
    assert not watch.is_alive()
