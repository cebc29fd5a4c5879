"""Atomic outputs: every artefact is written under a temporary name beside its path and renamed
into place when complete, so nothing half-written ever looks finished."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def leftovers(root: str | Path) -> list[Path]:
    """Partial outputs (`.*.partial`) under `root` that a killed writer left behind: a kill or a
    crash inside a native library runs no cleanup."""
    return sorted(Path(root).rglob(".*.partial"))


def remove_leftovers(root: str | Path) -> list[Path]:
    """Remove every partial output under `root` and return what was removed. Only safe while no
    writer runs there: the workflow calls it when a run starts, holding Snakemake's lock."""
    found = leftovers(root)
    for path in found:
        _remove(path)
    return found


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
