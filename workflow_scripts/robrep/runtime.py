"""What every stage needs from its surroundings: the device, the software versions, atomic outputs."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` uses CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no GPU; use 'auto' or 'cpu'")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device: {requested!r} is not one of auto, cpu, cuda")
    return torch.device(requested)


def software_versions() -> dict[str, str]:
    """Versions recorded in every artefact's metadata."""
    import robrep

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "robrep": robrep.__version__,
    }


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def partial_path(path: str | Path) -> Path:
    """Where `atomic_output` writes `path` until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield `.{name}.partial` beside `path` (to write a file or a directory); rename it into place
    on success, remove it on failure. Nothing half-written ever appears at `path`, and a retry
    after a kill (which runs no cleanup) starts by removing what the killed attempt left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _remove(path)  # os.replace cannot overwrite a non-empty directory
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
