"""Rule aggregate: stack every comparison into one xarray Dataset (Zarr + netCDF) and an accuracy CSV."""

import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.analyses import aggregate, write_netcdf, write_zarr
from robrep.training import software_versions

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p = snakemake.params
    ds, accuracy = aggregate(
        snakemake.input.comparisons,
        dict(zip(p.model_ids, snakemake.input.metrics, strict=True)),
        p.methods,
        attrs={"config": dict(p.config), "versions": software_versions()},
    )
    write_zarr(ds, snakemake.output.zarr)
    write_netcdf(ds, snakemake.output.netcdf)
    tmp = Path(snakemake.output.accuracy + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(accuracy[0]))
        writer.writeheader()
        writer.writerows(accuracy)
    os.replace(tmp, snakemake.output.accuracy)
    print(ds)
