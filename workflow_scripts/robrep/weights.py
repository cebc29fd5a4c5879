"""Weights on disk: safetensors with JSON metadata, written atomically; never pickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from .models import ProbedNet, build_model
from .runtime import atomic_output

METADATA_KEY = "robrep"


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write `model`'s state dict to `path` (safetensors) with `metadata` as JSON, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata saved with a weights file."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: not a robrep weights file (no {METADATA_KEY!r} metadata)")
    return json.loads(meta[METADATA_KEY])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ProbedNet, dict]:
    """Rebuild the architecture named in the file's metadata and load its weights (eval mode)."""
    meta = read_metadata(path)
    model = build_model(
        meta["arch"], meta["in_channels"], meta["num_classes"], meta["mean"], meta["std"]
    )
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), meta
