"""xarray datasets written atomically: netCDF-4 (h5netcdf) files and Zarr v3 stores."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from .runtime import atomic_output


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to netCDF-4 (h5netcdf) under a temporary name, then rename."""
    with atomic_output(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def write_zarr(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to a Zarr v3 store under a temporary name, then swap it into place."""
    with atomic_output(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3)
