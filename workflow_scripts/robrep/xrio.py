"""xarray datasets written atomically and checksummed, and read back verified: netCDF-4
(h5netcdf, every numeric array with HDF5's Fletcher-32 checksum) and Zarr v3 stores (CRC32C per
chunk). A read that fails its checksum raises `DamagedArtefactError` naming the file and the
command that rebuilds it; it never yields a number."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
import zarr

from .runtime import atomic_output


class DamagedArtefactError(RuntimeError):
    """A netCDF or Zarr artefact fails its checksum or cannot be read: rebuild it."""


def _checksummed(ds: xr.Dataset) -> list[str]:
    """Variables that carry a checksum: non-empty numeric arrays of at least one dimension (HDF5
    checksums chunked data; scalars, empty arrays and strings are not chunked)."""
    return [
        name
        for name, var in ds.variables.items()
        if var.ndim >= 1 and var.size > 0 and var.dtype.kind in "biuf"
    ]


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to netCDF-4 (h5netcdf) under a temporary name, then rename; numeric arrays carry
    Fletcher-32 checksums that `read_netcdf` (and any HDF5 reader) verifies."""
    encoding = {name: {"fletcher32": True} for name in _checksummed(ds)}
    with atomic_output(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)


def read_netcdf(path: str | Path, rebuild: str | None = None) -> xr.Dataset:
    """Load a netCDF file into memory, every checksum verified; a damaged file raises
    `DamagedArtefactError` naming it and `rebuild` (default: force-rerun the file)."""
    try:
        return xr.load_dataset(path, engine="h5netcdf")
    except (OSError, ValueError, KeyError) as err:
        command = rebuild or f"snakemake --cores all --forcerun {path}"
        raise DamagedArtefactError(
            f"{path} cannot be read or fails its checksum ({type(err).__name__}: {err}); "
            f"rebuild it: {command}"
        ) from err


def write_zarr(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to a Zarr v3 store under a temporary name, then swap it into place; every
    chunk carries a CRC32C checksum."""
    codecs = (zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec())
    encoding = {name: {"compressors": codecs} for name in ds.variables}
    with atomic_output(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3, encoding=encoding)
