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
    assert cluster.node_capacity(None, ask_slurm=False) is None


def test_check_request_names_rule_request_node_and_setting():
    node = cluster.NodeCapacity(2, 4000, 60, "config resources.node")
    cluster.check_request("train", 3999, 60, node, "training.batch_size")
    cluster.check_request("train", 10**9, 10**9, None, "training.batch_size")
    with pytest.raises(cluster.ResourceRequestError) as err:
        cluster.check_request("similarity", 5000, 90, node, "activations.n_examples")
    text = str(err.value)
    for part in ("rule similarity", "5000 MB", "90 min", "4000 MB", "activations.n_examples"):
        assert part in text, text


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
