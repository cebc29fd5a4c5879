"""What every stage needs from its surroundings: the device and the software versions.

torch is imported only by `pick_device` (a job that runs no network never loads it); the versions
are read from the installed packages' metadata.
"""

from __future__ import annotations

import sys
from importlib import metadata
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
        raise RuntimeError("device: 'cuda' requested but torch sees no GPU; use 'auto' or 'cpu'")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device: {requested!r} is not one of {', '.join(DEVICES)}")
    return torch.device(requested)


def software_versions() -> dict[str, str]:
    """Versions recorded in every artefact's metadata (torch's as its package metadata gives it,
    which is `torch.__version__`, without importing it)."""
    import robrep

    return {
        "python": sys.version.split()[0],
        "torch": metadata.version("torch"),
        "robrep": robrep.__version__,
    }
