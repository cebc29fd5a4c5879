"""Zarr v3 chunks that check themselves: every chunk carries a CRC32C checksum verified on read,
and a read that fails it (or yields non-finite values) is reported as damage, naming the array,
the place and the command that rebuilds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robrep.io.checksums import DamagedArtefactError, rebuild_command


class DamagedStoreError(DamagedArtefactError):
    """A store's data fails its checksum, holds non-finite values or lacks an array: it was
    damaged after extraction (which never writes any of these) and must be rebuilt."""


COMPRESSORS = ("zstd", "blosc", "none")  # activations.compressor


def chunk_codecs(compressor: str) -> list:
    """The chunk codecs of a store array: the compressor, then a CRC32C checksum, verified on
    every read, so a damaged chunk fails its read instead of decoding as data."""
    if compressor == "zstd":
        return [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()]
    if compressor == "blosc":
        codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
        return [codec, zarr.codecs.Crc32cCodec()]
    if compressor == "none":
        return [zarr.codecs.Crc32cCodec()]
    raise ValueError(
        f"activations.compressor: {compressor!r} is not one of {', '.join(COMPRESSORS)}"
    )


def checked_read(
    path: Path, array: str, where: str, read: Callable[[], Any], what: str = "activation store"
) -> Any:
    """`read()`, with a failed chunk checksum or a non-finite value reported as damage to the
    `what` at `path`."""
    try:
        got = read()
    except ValueError as err:
        if "checksum" not in str(err):
            raise
        raise DamagedStoreError(
            f"{what} {path}: array {array!r}, {where}, fails its checksum (damaged on "
            f"disk); rebuild it: {rebuild_command(path)}"
        ) from err
    values = np.asarray(got)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DamagedStoreError(
            f"{what} {path}: array {array!r}, {where}, holds non-finite values, which "
            f"extraction never stores (damaged); rebuild it: {rebuild_command(path)}"
        )
    return got
