"""xarray datasets written atomically and checksummed, and read back verified: netCDF-4
(h5netcdf, every numeric array with HDF5's Fletcher-32 checksum, and a SHA-256 over everything
else: attributes, string and scalar variables) and Zarr v3 stores (CRC32C per chunk). A read that
fails a checksum raises `DamagedArtefactError` naming the file and the command that rebuilds it;
it never yields a number."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from robrep.io.atomic import atomic_output
from robrep.io.checksums import DamagedArtefactError, digest, rebuild_command

__all__ = ["DamagedArtefactError", "read_netcdf", "write_netcdf", "write_zarr"]

METADATA_DIGEST_ATTR = "robrep_metadata_sha256"


def _checksummed(ds: xr.Dataset) -> list[str]:
    """Variables that carry a checksum: non-empty numeric arrays of at least one dimension (HDF5
    checksums chunked data; scalars, empty arrays and strings are not chunked)."""
    return [
        name
        for name, var in ds.variables.items()
        if var.ndim >= 1 and var.size > 0 and var.dtype.kind in "biuf"
    ]


def _metadata_digest(ds: xr.Dataset) -> str:
    """SHA-256 of what Fletcher-32 does not cover: the attributes of the dataset and of every
    variable, and the values of the variables without a chunk checksum."""
    checked = set(_checksummed(ds))
    content: dict[str, Any] = {
        "attrs": {k: v for k, v in ds.attrs.items() if k != METADATA_DIGEST_ATTR},
        "variables": {
            str(name): {
                "dims": list(var.dims),
                "attrs": dict(var.attrs),
                "values": None if name in checked else var.values,
            }
            for name, var in ds.variables.items()
        },
    }
    return digest(content)


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to netCDF-4 (h5netcdf) under a temporary name, then rename; numeric arrays carry
    Fletcher-32 checksums that `read_netcdf` (and any HDF5 reader) verifies, the rest a SHA-256
    in the attribute `robrep_metadata_sha256`."""
    encoding = {name: {"fletcher32": True} for name in _checksummed(ds)}
    ds = ds.copy()
    ds.attrs[METADATA_DIGEST_ATTR] = _metadata_digest(ds)
    with atomic_output(path) as tmp:
        try:
            ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
        except BaseException:
            # A write that failed (a full disk) can leave xarray's file manager holding the file;
            # closing it later reopens it by name in mode "a", which creates it again after
            # atomic_output removed it. Collect it now, before the removal.
            gc.collect()
            raise


def read_netcdf(path: str | Path, rebuild: str | None = None) -> xr.Dataset:
    """Load a netCDF file into memory, every checksum verified; a damaged file raises
    `DamagedArtefactError` naming it and `rebuild` (default: force-rerun the file). A file without
    the metadata digest is damage: its attributes and labels would be unverified."""
    command = rebuild or rebuild_command(path)
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except (OSError, ValueError, KeyError) as err:
        raise DamagedArtefactError(
            f"{path} cannot be read or fails its checksum ({type(err).__name__}: {err}); "
            f"rebuild it: {command}"
        ) from err
    saved = ds.attrs.pop(METADATA_DIGEST_ATTR, None)
    if saved is None:
        raise DamagedArtefactError(
            f"{path} has no metadata checksum ({METADATA_DIGEST_ATTR}), so its attributes and "
            f"labels are unverified (written by an older robrep, or not by robrep); rebuild "
            f"it: {command}"
        )
    if saved != _metadata_digest(ds):
        raise DamagedArtefactError(
            f"{path} fails its metadata checksum (attributes or labels changed); "
            f"rebuild it: {command}"
        )
    return ds


def write_zarr(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to a Zarr v3 store under a temporary name, then swap it into place; every
    chunk carries a CRC32C checksum."""
    codecs = (zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec())
    encoding = {name: {"compressors": codecs} for name in ds.variables}
    with atomic_output(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3, encoding=encoding)
