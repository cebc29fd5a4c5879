"""Rule aggregate: stack every comparison into one xarray Dataset (Zarr + netCDF) and an accuracy CSV."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.io.atomic import atomic_output
from robrep.io.xrio import write_netcdf, write_zarr
from robrep.runtime import software_versions, source_commit
from robrep.study.findings import paper_claims
from robrep.study.summary import aggregate
from robrep.study.verdicts import verdict_table

from _log import redirect_to_log

with redirect_to_log(snakemake):
    ds, accuracy = aggregate(
        snakemake.input.comparisons,
        snakemake.input.metrics,
        probe_files=snakemake.input.probes,
        autoattack_files=snakemake.input.autoattack,
        masking_gap=snakemake.params.masking_gap,
        attrs={
            "config": dict(snakemake.params.settings),
            "versions": {**software_versions(), "robrep_commit": source_commit()},
        },
    )
    write_zarr(ds, snakemake.output.zarr)
    write_netcdf(ds, snakemake.output.netcdf)
    claims = paper_claims(ds)
    for path, rows in ((snakemake.output.accuracy, accuracy), (snakemake.output.findings, claims)):
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["claim"])
            writer.writeheader()
            writer.writerows(rows)
    print(ds)
    print(f"\nFindings ({snakemake.output.findings}): robust configurations per verdict")
    print(verdict_table(claims))
