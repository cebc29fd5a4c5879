"""What every stage needs from its surroundings: the device and the software versions.

torch is imported only by `pick_device` (a job that runs no network never loads it, and
`compute_device` spares a numpy job the import where no GPU can be visible); its version is read
from its package files.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


DEVICES = ("auto", "cpu", "cuda")  # config `device`


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` uses CUDA when available, else CPU; `cuda` without a GPU is an error."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: 'cuda' requested but torch sees no GPU on {platform.node()} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, SLURM job "
            f"{os.environ.get('SLURM_JOB_ID', 'none')}); ask for a GPU (the rule's gpu resource) "
            f"or use device 'auto' or 'cpu'"
        )
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device: {requested!r} is not one of {', '.join(DEVICES)}")
    return torch.device(requested)


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
    if requested not in DEVICES:
        raise ValueError(f"device: {requested!r} is not one of {', '.join(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and gpu_absent()):
        return "cpu"
    return str(pick_device(requested))


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


def software_versions() -> dict[str, str]:
    """Versions recorded in every artefact's metadata."""
    import robrep

    return {
        "python": sys.version.split()[0],
        "torch": torch_version(),
        "robrep": robrep.__version__,
    }
