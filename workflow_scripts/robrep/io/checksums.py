"""SHA-256 digests carried inside robrep's small artefacts, and the one way to say how to rebuild a
damaged one.

JSON files (a model's metrics.json) hold a `sha256` of their own canonical content; netCDF files
hold one over their metadata (attributes, and the string and scalar variables HDF5's Fletcher-32
does not cover); Zarr stores one over their group attributes (`sign_attrs`); weights one over
their metadata (`robrep.io.weights`). Readers verify before use and raise `DamagedArtefactError`
naming the file and the command that rebuilds it. A missing digest is damage too: nothing vouches
for what it would cover.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robrep.io.atomic import atomic_output

JSON_DIGEST_KEY = "sha256"


class DamagedArtefactError(RuntimeError):
    """An artefact fails its checksum or cannot be read: rebuild it."""


def rebuild_command(path: str | Path | None, configfiles: Sequence[str] = ()) -> str:
    """The command that rebuilds one output of the workflow (and what depends on it), with the
    run's config files; without a path, the run that builds whatever is missing."""
    command = "snakemake --cores all"
    if configfiles:
        command += " --configfile " + " ".join(configfiles)
    return f"{command} --forcerun {path}" if path else command


def damaged(path: str | Path, why: str) -> DamagedArtefactError:
    """The error for a damaged artefact: its path, what is wrong, and how to rebuild it."""
    return DamagedArtefactError(f"{path} {why}; rebuild it: {rebuild_command(path)}")


def _plain(value: Any) -> Any:
    """JSON-able form of numpy values, the same before writing and after reading back."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in np.asarray(value, dtype=object).ravel().tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def digest(content: Any) -> str:
    """SHA-256 of `content` as canonical JSON (sorted keys, no whitespace, numpy as plain)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


ATTRS_DIGEST_KEY = "robrep_attrs_sha256"


def sign_attrs(attrs: Any) -> None:
    """Add the SHA-256 of a Zarr group's attributes (as they read back) to them: written last, so
    a store whose writer died before it is unsigned, hence damaged."""
    content = {k: v for k, v in dict(attrs).items() if k != ATTRS_DIGEST_KEY}
    attrs[ATTRS_DIGEST_KEY] = digest(content)


def verified_attrs(attrs: Any, path: str | Path, rebuild: str | None = None) -> dict[str, Any]:
    """A Zarr group's attributes without their digest, verified: the digest missing or not
    matching raises `DamagedArtefactError` naming the store and how to rebuild it."""
    content = dict(attrs)
    saved = content.pop(ATTRS_DIGEST_KEY, None)
    why = None
    if saved is None:
        why = f"has no attribute checksum ({ATTRS_DIGEST_KEY}), so its metadata is unverified"
    elif saved != digest(content):
        why = "fails its attribute checksum (zarr.json edited or damaged)"
    if why:
        raise DamagedArtefactError(f"{path} {why}; rebuild it: {rebuild or rebuild_command(path)}")
    return content


def write_json(content: Mapping[str, Any], path: str | Path) -> None:
    """Write `content` as JSON with its SHA-256 under `sha256`, atomically."""
    body = dict(content)
    body[JSON_DIGEST_KEY] = digest(body)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2, default=_plain))


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON artefact, its SHA-256 verified; a file without one is damage (robrep writes every
    JSON artefact with it, so a missing digest is an edit or an older robrep's file). The digest
    key is removed from what is returned."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(path, f"cannot be read as JSON ({err})") from err
    if not isinstance(body, dict):
        raise damaged(path, "is not a JSON object")
    saved = body.pop(JSON_DIGEST_KEY, None)
    if saved is None:
        raise damaged(
            path, f"has no SHA-256 checksum ('{JSON_DIGEST_KEY}'), so nothing vouches for it"
        )
    if saved != digest(body):
        raise damaged(path, "fails its SHA-256 checksum")
    return body
