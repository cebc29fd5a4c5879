"""Tiny activation stores for tests: random 8x8 images through a model into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from robrep.store.extract import extract_to_store
from robrep.store.format import StoreLayout

# What a comparison reads from its stores' attributes.
STORE_META = {
    "model_id": "m",
    "dataset": "digits",
    "arch": "convnet",
    "method_id": "standard",
    "method": {"method": "standard", "id": "standard", "norm": None, "eps": 0.0},
    "seed": 0,
    "checkpoint": "final",
    "epoch": 1,
    "inputs": "benign",
}


def images(n: int, seed: int = 0) -> np.ndarray:
    """`n` random single-channel 8x8 images in [0, 1)."""
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def extract(
    model: nn.Module,
    path: Path,
    n: int = 50,
    ids: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    x: np.ndarray | None = None,
    **kw: Any,
) -> Path:
    """A store of `model` on `x` (default `images(n)`; labels i % 10, ids 100.. unless given) at
    the block layers unless `layers` is given; StoreLayout fields in `kw` override chunk_rows 16,
    the rest goes to `extract_to_store`."""
    ids = np.arange(100, 100 + n) if ids is None else ids
    layers = kw.pop("layers", model.probe_layers("blocks"))
    layout = {"chunk_rows": 16}
    layout.update({k: kw.pop(k) for k in list(kw) if k in StoreLayout.__dataclass_fields__})
    return extract_to_store(
        model,
        images(n) if x is None else x,
        np.arange(n) % 10,
        ids,
        path,
        layers,
        meta or {"model_id": "m"},
        StoreLayout(**layout),
        progress=False,
        **kw,
    )


def corrupt_middle(path, length=21):
    """Overwrite `length` bytes in the middle of a file, keeping its size (a failing disk)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + length] = bytes((b + 1) % 256 for b in data[mid : mid + length])
    path.write_bytes(bytes(data))


def chunk_files(array_dir):
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())
