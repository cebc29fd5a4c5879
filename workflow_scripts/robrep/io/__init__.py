"""Artefact I/O: atomic writes, checksums, xarray and zarr I/O, safetensors weights."""
