"""A one-node SLURM cluster on localhost, for the `slurm` test and for trying the profile by hand.

    python tests/helpers/slurm_cluster.py start [ROOT]   # install (as root, if missing) and start daemons
    python tests/helpers/slurm_cluster.py stop [ROOT]    # stop them by pid
    squeue; sinfo                                # then use it as any cluster

munged runs with its own key and socket under ROOT; slurmctld and slurmd run in the foreground
as children of this helper's process group and are stopped by pid. The configuration is written
to ROOT/slurm.conf *and* /etc/slurm/slurm.conf: the executor plugin's job step strips every
SLURM_* variable (SLURM_CONF too) before its inner `srun`, so only the default path is seen there.
There is no accounting daemon, so the profile uses `slurm-status-command: squeue` and
`slurm-no-account: true`. MinJobAge 7200 keeps finished jobs visible to squeue for the plugin's
status checks and for the test's own check of every job's final state, after a run that may take
many minutes on a loaded machine (at 600 s a CI run lost its first jobs' states).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
ETC_CONF = Path("/etc/slurm/slurm.conf")


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message says why."""


def missing_binaries() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "munged") if not shutil.which(b)]


def install() -> None:
    """apt-get install the Debian packages (root only)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {missing_binaries()} and not root, cannot apt-get install")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, capture_output=True
    )
    if missing_binaries():
        raise ClusterError(f"still missing after install: {missing_binaries()}")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("cannot read MemTotal from /proc/meminfo")


FAKE_GPUS = 2  # GPUs the node advertises: gres on character devices, no real GPU behind them


def write_fake_gpus(root: Path) -> str:
    """FAKE_GPUS character devices under ROOT/gpus (copies of /dev/null's) for gres.conf's File=;
    returns the File= pattern."""
    gpus = root / "gpus"
    gpus.mkdir(parents=True, exist_ok=True)
    null = os.stat("/dev/null").st_rdev
    for i in range(FAKE_GPUS):
        path = gpus / f"fake{i}"
        if not path.exists():
            os.mknod(path, 0o666 | stat.S_IFCHR, null)
    return f"{gpus}/fake[0-{FAKE_GPUS - 1}]"


def write_config(root: Path) -> Path:
    """slurm.conf for one node `localhost` with this machine's CPUs, 90% of its memory and
    FAKE_GPUS GPUs (gres.conf beside it)."""
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "gres.conf").write_text(f"Name=gpu File={write_fake_gpus(root)}\n")
    conf = f"""\
ClusterName=robrep
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket={root / "munge" / "run" / "munge.socket.2"}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=7200
SchedulerType=sched/backfill
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={int(_memory_mb() * 0.9)} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    path = root / "slurm.conf"
    path.write_text(conf)
    ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
    if ETC_CONF.exists() and not (root / "etc_slurm.conf.orig").exists():
        shutil.copy(ETC_CONF, root / "etc_slurm.conf.orig")
    shutil.copy(path, ETC_CONF)
    return path


def start_munge(root: Path) -> int:
    """munged with its own key (dir 0700) and socket (dir 0755); returns its pid."""
    base = root / "munge"
    etc, run, lib, log = (base / d for d in ("etc", "run", "lib", "log"))
    for d in (etc, run, lib, log):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(etc, 0o700)
    os.chmod(run, 0o755)
    os.chmod(lib, 0o700)
    os.chmod(log, 0o700)
    key = etc / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
    pidfile = run / "munged.pid"
    subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={run / 'munge.socket.2'}",
            f"--key-file={key}",
            f"--pid-file={pidfile}",
            f"--log-file={log / 'munged.log'}",
            f"--seed-file={lib / 'munged.seed'}",
        ],
        check=True,
        capture_output=True,
    )
    _wait(lambda: pidfile.exists() and (run / "munge.socket.2").exists(), 20, "munged socket")
    return int(pidfile.read_text().strip())


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise ClusterError(f"timed out after {seconds} s waiting for {what}")


def _node_ready() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in {"idle", "mixed", "allocated"}


def start(root: str | Path) -> dict[str, int]:
    """Install if needed and start munged, slurmctld and slurmd; returns their pids."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    install()
    conf = write_config(root)
    pids = {"munged": start_munge(root)}
    logs = root / "log"
    ctld = subprocess.Popen(
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        stdout=open(logs / "slurmctld.out", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pids["slurmctld"] = ctld.pid
    time.sleep(1)
    slurmd = subprocess.Popen(
        ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
        stdout=open(logs / "slurmd.out", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pids["slurmd"] = slurmd.pid
    (root / "pids.json").write_text(json.dumps(pids))
    try:
        _wait(_node_ready, 60, "node localhost to become idle (see logs under " + str(logs) + ")")
    except ClusterError:
        stop(root)
        raise
    return pids


def stop(root: str | Path) -> None:
    """Stop every daemon by its pid and restore /etc/slurm/slurm.conf."""
    root = Path(root).resolve()
    pidfile = root / "pids.json"
    if not pidfile.exists():
        return
    pids = json.loads(pidfile.read_text())
    for name in ("slurmd", "slurmctld", "munged"):
        pid = pids.get(name)
        if not pid:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:  # reap our own children
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink()
    original = root / "etc_slurm.conf.orig"
    if original.exists():
        shutil.copy(original, ETC_CONF)
    elif ETC_CONF.exists() and ETC_CONF.read_text() == (root / "slurm.conf").read_text():
        ETC_CONF.unlink()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in {"start", "stop"}:
        sys.exit("usage: python tests/helpers/slurm_cluster.py start|stop [ROOT]")
    where = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/robrep-slurm")
    if sys.argv[1] == "start":
        print(json.dumps(start(where)))
    else:
        stop(where)
