"""What every stage needs from its surroundings: the device and the software versions.

torch is imported only by `pick_device` (a job that runs no network never loads it, and
`compute_device` spares a numpy job the import where no GPU can be visible); its version is read
from its package files.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import importlib.util
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


DEVICES = ("auto", "cpu", "cuda")  # config `device`


def _check_device(requested: str) -> None:
    if requested not in DEVICES:
        raise ValueError(f"device: {requested!r} is not one of {', '.join(DEVICES)}")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` uses CUDA when available, else CPU; `cuda` without a GPU is an error. Outside
    SLURM (a workstation) a CUDA job leases one GPU of its own (`lease_gpu`) and runs on it."""
    import torch

    _check_device(requested)
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device: 'cuda' requested but torch sees no GPU on {platform.node()} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, SLURM job "
            f"{os.environ.get('SLURM_JOB_ID', 'none')}); ask for a GPU (the rule's gpu resource) "
            f"or use device 'auto' or 'cpu'"
        )
    if "SLURM_JOB_ID" in os.environ:  # SLURM gave this job its GPU: the first one it sees
        return torch.device("cuda")
    return torch.device("cuda", _leased_gpu(torch.cuda.device_count()))


@functools.cache
def _leased_gpu(count: int) -> int:
    """This process's one lease, however often it asks for its device."""
    return lease_gpu(gpu_ids(count))


class GpuBusyError(RuntimeError):
    """Every GPU of this machine stayed leased by other jobs for longer than the wait allowed."""


GPU_LOCKS_ENV = "ROBREP_GPU_LOCKS"  # where the leases live (default: a directory in tmp per user)
_LEASES: list[Any] = []  # open lock files: a lease lasts as long as this process


def gpu_ids(count: int) -> list[str]:
    """The ids CUDA's devices 0 .. count-1 have on this machine: CUDA_VISIBLE_DEVICES's entries
    where it is set (what two jobs with different masks agree on), else their indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def gpu_lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"robrep-gpus-{os.getuid()}"
    return Path(os.environ.get(GPU_LOCKS_ENV) or default)


def lease_gpu(
    ids: Sequence[str],
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
) -> int:
    """The index (into `ids`) of a GPU no other job holds, leased until this process ends: an
    exclusive `flock` on `<lock_dir>/gpu-<id>.lock`, which the kernel releases when the process
    exits, crash or kill included. With every GPU leased it waits (saying so once a minute),
    and after `timeout` seconds raises `GpuBusyError`. A workstation run thus puts each GPU job
    on its own device, and never two on one."""
    lock_dir = Path(lock_dir) if lock_dir is not None else gpu_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = told = time.monotonic()
    while True:
        for index, gpu in enumerate(ids):
            fh = open(lock_dir / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115 (held for the process)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()} {platform.node()}\n")
            fh.flush()
            _LEASES.append(fh)
            return index
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise GpuBusyError(
                f"all {len(ids)} GPUs ({', '.join(ids)}) stayed leased for {waited:.0f} s "
                f"(locks in {lock_dir}); run fewer GPU jobs at once (--resources gpu=N)"
            )
        if time.monotonic() - told >= 60:
            print(f"waiting for a free GPU: all of {', '.join(ids)} are leased", file=sys.stderr)
            told = time.monotonic()
        time.sleep(poll)


def gpu_absent() -> bool:
    """True where torch can see no GPU: CUDA_VISIBLE_DEVICES hides every one, or the machine has
    no NVIDIA or AMD GPU device node. Decided without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return True
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def compute_device(requested: str = "auto") -> str:
    """The device of a job that computes with numpy on the CPU and torch on a GPU (similarity):
    `pick_device`'s answer as a string, but "cpu" without importing torch when `requested` is
    "cpu", or "auto" where `gpu_absent()`."""
    _check_device(requested)
    if requested == "cpu" or (requested == "auto" and gpu_absent()):
        return "cpu"
    return str(pick_device(requested))


def gpu_budget_mb(
    device: torch.device | str, resources: Mapping[str, Any] | None = None
) -> float | None:
    """The GPU memory (MB) a job's passes may fill on `device`: `resources.gpu_mem_mb` (config
    `resources`) when set, else what the GPU has free plus what this process already holds; None
    on the CPU."""
    if str(device).split(":")[0] != "cuda":
        return None
    configured_mb = (resources or {}).get("gpu_mem_mb")
    if configured_mb is not None:
        return float(configured_mb)
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_reserved(device)) / 2**20


def torch_version() -> str:
    """`torch.__version__` (build tag included, e.g. `2.14.1+cu130`) without importing torch: the
    package's generated `torch/version.py` holds it as its first assignment."""
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return loaded.__version__
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("torch is not installed")
    text = (Path(spec.origin).parent / "version.py").read_text()
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    if found is None:
        raise RuntimeError(f"no __version__ in {Path(spec.origin).parent / 'version.py'}")
    return found.group(1)


@functools.cache
def source_commit() -> str:
    """The git commit of the robrep checkout this code runs from, `+dirty` when tracked files
    differ from it; `unknown` outside a git checkout (an installed copy, the copy of the
    workflow a test runs). The summary and the report's provenance page carry it."""
    import subprocess

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise OSError(out.stderr.strip())
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def software_versions() -> dict[str, str]:
    """Versions recorded in every artefact's metadata (not the commit: a job imports robrep
    from the checkout or from the workflow's copy of it, so that would differ between a local
    and a cluster run of the same code; the summary records it, `source_commit`)."""
    import robrep

    return {
        "python": sys.version.split()[0],
        "torch": torch_version(),
        "robrep": robrep.__version__,
    }


def machine_description() -> dict[str, str]:
    """The machine a job runs on, for the report's provenance: host, platform, CPU, cores and
    memory (from /proc where it exists)."""
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory = f"{int(kb.group(1)) / 2**20:.1f} GiB" if kb else memory
    except OSError:
        pass
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
    }
