"""Weights on disk: safetensors with JSON metadata, a SHA-256 of the tensors and one of the
metadata, written atomically; never pickled. A file that does not parse, lacks a digest or does
not match one is refused, naming the file and the command that rebuilds it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from robrep.io.atomic import atomic_output
from robrep.io.checksums import DamagedArtefactError, rebuild_command

METADATA_KEY = "robrep"
DIGEST_KEY = "robrep_sha256"
METADATA_DIGEST_KEY = "robrep_metadata_sha256"


class DamagedWeightsError(DamagedArtefactError):
    """A weights file does not parse or fails its checksum: rebuild it."""


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and raw bytes of a state dict's tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write `model`'s state dict to `path` (safetensors) with `metadata` as JSON and the tensors'
    SHA-256, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps(metadata, sort_keys=True)
    header = {
        METADATA_KEY: text,
        METADATA_DIGEST_KEY: hashlib.sha256(text.encode()).hexdigest(),
        DIGEST_KEY: tensors_digest(state),
    }
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=header)


def _damaged(path: str | Path, why: str) -> DamagedWeightsError:
    return DamagedWeightsError(
        f"weights {path} {why} (damaged or truncated); rebuild it: {rebuild_command(path)}"
    )


def _header(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise _damaged(path, f"cannot be read: {err}") from err


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata saved with a weights file, verified against its SHA-256 (the metadata
    names the method and eps a store records: unverified, a changed byte would relabel it)."""
    meta = _header(path)
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: not a robrep weights file (no {METADATA_KEY!r} metadata)")
    saved = meta.get(METADATA_DIGEST_KEY)
    if saved is None:
        raise _damaged(path, f"has no metadata checksum ({METADATA_DIGEST_KEY})")
    if saved != hashlib.sha256(meta[METADATA_KEY].encode()).hexdigest():
        raise _damaged(path, "fails its metadata checksum")
    try:
        return json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise _damaged(path, f"has unreadable metadata: {err}") from err


def verified_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors, verified against the SHA-256 saved with them (a file without
    one is damage)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise _damaged(path, f"cannot be read: {err}") from err
    saved = _header(path).get(DIGEST_KEY)
    if saved is None:
        raise _damaged(path, f"has no tensor checksum ({DIGEST_KEY})")
    if saved != tensors_digest(state):
        raise _damaged(path, "fails its SHA-256 checksum")
    return state
