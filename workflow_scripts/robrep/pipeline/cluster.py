"""Fit cluster submissions to the nodes that exist, and stop a run that SLURM can never schedule.

Snakemake sizes a group job by summing its members that can run side by side, constrained only by
the global `--cores`/`--resources`; without them a group of 25 two-thread comparisons asks one
node for 50 CPUs and SLURM keeps it pending forever. `node_capacity` finds what one node gives
(config `resources.node`, else the largest node `sinfo` lists), which the workflow sets as those
constraints; `check_request` refuses at start-up a single job no node can hold; `PendingWatch`
ends a run whose jobs SLURM reports as impossible to schedule instead of waiting on them.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# squeue reasons of a pending job that no amount of waiting resolves (SLURM's `squeue` man page,
# JOB REASON CODES): the request exceeds what the partition, its nodes, QOS or account allow.
IMPOSSIBLE_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "ReqNodeNotAvail",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "QOSMaxWallDurationPerJobLimit",
        "QOSMaxNodePerJobLimit",
        "AssocMaxCpuPerJobLimit",
        "AssocMaxMemPerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "AssocMaxNodePerJobLimit",
    }
)


class ResourceRequestError(ValueError):
    """A job asks for more than any node gives; the message names the rule and what to change."""


@dataclass(frozen=True)
class NodeCapacity:
    """What one node gives a job: CPUs, memory (MB), the longest runtime (minutes), GPUs and the
    memory of one GPU (MB); None where unknown (no limit, or not said)."""

    cores: int
    mem_mb: int
    max_runtime: int | None
    source: str  # where the figures come from, for messages
    gpus: int | None = None
    gpu_mem_mb: int | None = None

    def __str__(self) -> str:
        limit = "no time limit" if self.max_runtime is None else f"{self.max_runtime} min"
        gpus = "" if self.gpus is None else f", {self.gpus} GPUs"
        if self.gpus and self.gpu_mem_mb is not None:
            gpus += f" of {self.gpu_mem_mb} MB"
        return f"{self.cores} CPUs, {self.mem_mb} MB{gpus}, {limit} ({self.source})"


def parse_time_limit(text: str) -> int | None:
    """Minutes of a SLURM time limit (`[days-]hours:minutes:seconds`, `minutes`, `infinite`)."""
    text = text.strip()
    if not text or text.lower() in {"infinite", "unlimited", "n/a"}:
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts[-3:]
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def gres_gpus(text: str) -> int:
    """GPUs in a SLURM gres string (`gpu:4`, `gpu:a100:2(S:0-1),mps:100`, `(null)`)."""
    count = 0
    for item in text.split(","):
        fields = re.sub(r"\(.*?\)", "", item.strip()).split(":")
        if fields[0] == "gpu" and len(fields) > 1 and fields[-1].isdigit():
            count += int(fields[-1])
    return count


def parse_sinfo(text: str) -> NodeCapacity | None:
    """The largest node of `sinfo -h -N -o "%c|%m|%l|%G"` output (CPUs, then memory, decide; the
    GPUs are the most any node has: a GPU job goes to a GPU node). Without the gres column the
    GPUs are unknown."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) not in (3, 4):
            continue
        cpus, mem = (re.sub(r"\D", "", f) for f in fields[:2])
        if cpus and mem:
            gpus = gres_gpus(fields[3]) if len(fields) == 4 else None
            nodes.append((int(cpus), int(mem), parse_time_limit(fields[2]), gpus))
    if not nodes:
        return None
    cores, mem_mb, _, _ = max(nodes, key=lambda n: (n[0], n[1]))
    limits = [n[2] for n in nodes]
    max_runtime = None if None in limits else max(limits)
    counts = [n[3] for n in nodes if n[3] is not None]
    gpus = max(counts) if counts else None
    return NodeCapacity(cores, mem_mb, max_runtime, "the largest node sinfo lists", gpus)


def largest_slurm_node() -> NodeCapacity | None:
    """The largest node SLURM reports; None when sinfo cannot answer."""
    command = ["sinfo", "-h", "-N", "-o", "%c|%m|%l|%G"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(out.stdout) if out.returncode == 0 else None


def node_capacity(configured: dict | None, ask_slurm: bool) -> NodeCapacity | None:
    """Config `resources.node` ({cores, mem_mb[, max_runtime, gpus, gpu_mem_mb]}) if set, else
    (with `ask_slurm`) the largest node SLURM lists; None when neither says."""
    if configured:
        return NodeCapacity(
            int(configured["cores"]),
            int(configured["mem_mb"]),
            configured.get("max_runtime"),
            "config resources.node",
            int(configured.get("gpus", 0)),
            configured.get("gpu_mem_mb"),
        )
    return largest_slurm_node() if ask_slurm else None


def check_request(
    rule: str,
    request: Mapping[str, int],
    node: NodeCapacity | None,
    setting: str,
    gpu_setting: str = "",
) -> None:
    """Refuse a job (`request`: its mem_mb, runtime, and on a GPU gpu and gpu_mem_mb) that no node
    can run; `setting` names the config keys that size it, `gpu_setting` its GPU memory."""
    if node is None:
        return
    gpus = request.get("gpu", 0)
    if gpus and node.gpus is not None and node.gpus < gpus:
        raise ResourceRequestError(
            f"rule {rule} computes on a GPU (device: cuda) but the node has none ({node}); "
            "set device: cpu (or auto, which asks for no GPU), submit to a GPU partition "
            "(slurm_partition), or give the node's GPUs in resources.node.gpus"
        )
    over, change = [], [setting]
    if request["mem_mb"] > node.mem_mb:
        over.append(f"{request['mem_mb']} MB of memory")
    if node.max_runtime is not None and request["runtime"] > node.max_runtime:
        over.append(f"{request['runtime']} min of runtime")
    gpu_mem = request.get("gpu_mem_mb")
    if gpu_mem and node.gpu_mem_mb is not None and gpu_mem > node.gpu_mem_mb:
        over.append(f"{gpu_mem} MB of GPU memory")
        change = [gpu_setting or setting]
    if over:
        raise ResourceRequestError(
            f"rule {rule} asks for {' and '.join(over)}, more than one node gives ({node}); "
            f"lower {' or '.join(change)}, or set its mem_mb/runtime under set-resources in the "
            "profile, or submit to a partition with larger nodes (slurm_partition)"
        )


@dataclass(frozen=True)
class PendingJob:
    """One pending SLURM job as squeue shows it."""

    job_id: str
    reason: str
    comment: str
    cpus: str
    memory: str
    time_limit: str
    submitted: str  # ISO time, as squeue's %V prints it

    @property
    def rule(self) -> str:
        """The rule (or group) the executor plugin wrote into the job's comment."""
        match = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", self.comment)
        return match.group(1) if match else self.comment or "?"

    def explain(self) -> str:
        return (
            f"SLURM job {self.job_id} (rule {self.rule}) can never start: SLURM reports "
            f"{self.reason}. It asks for {self.cpus} CPUs, {self.memory} of memory and a time "
            f"limit of {self.time_limit}. Lower what that rule asks for (config threads.<rule>; "
            "mem_mb/runtime under set-resources in the profile; for a group, `cores`, "
            "`resources: [mem_mb=...]` or group-components in the profile, or config "
            "resources.node) or submit to a partition that can hold it (slurm_partition)."
        )


SQUEUE_FORMAT = "%i|%r|%k|%C|%m|%l|%V|%Z"


def parse_squeue(text: str, workdir: str, since: str = "") -> list[PendingJob]:
    """Pending jobs of `squeue -h -t PD -o SQUEUE_FORMAT` whose working directory is `workdir`,
    submitted at or after `since` (ISO time: this run's, not an earlier run's leftovers)."""
    jobs = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 8 or fields[7].rstrip("/") != workdir.rstrip("/"):
            continue
        if fields[6] < since:
            continue
        jobs.append(PendingJob(*fields[:7]))
    return jobs


def impossible(jobs: list[PendingJob]) -> list[PendingJob]:
    """The jobs whose pending reason means they will never start."""
    return [j for j in jobs if j.reason.split(",")[0].strip("()") in IMPOSSIBLE_REASONS]


class PendingWatch(threading.Thread):
    """Polls squeue every `interval` seconds; when a job submitted from `workdir` since the watch
    started stays pending for a reason in IMPOSSIBLE_REASONS over `confirm` polls, calls
    `on_stuck(messages)` once and stops."""

    def __init__(
        self,
        workdir: str,
        on_stuck: Callable[[list[str]], None],
        interval: float = 15.0,
        confirm: int = 2,
        query: Callable[[], str] | None = None,
    ):
        super().__init__(name="robrep-pending-watch", daemon=True)
        self.workdir = workdir
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.on_stuck = on_stuck
        self.interval = interval
        self.confirm = confirm
        self.query = query or _squeue_pending
        self.stopped = threading.Event()

    def run(self) -> None:
        seen: dict[str, int] = {}
        while not self.stopped.wait(self.interval):
            stuck = impossible(parse_squeue(self.query(), self.workdir, self.since))
            seen = {j.job_id: seen.get(j.job_id, 0) + 1 for j in stuck}
            confirmed = [j for j in stuck if seen[j.job_id] >= self.confirm]
            if confirmed:
                self.on_stuck([j.explain() for j in confirmed])
                return

    def stop(self) -> None:
        self.stopped.set()


def _squeue_pending() -> str:
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "PD", "-o", SQUEUE_FORMAT],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""
