"""Rule similarity: compare two activation stores with the configured metrics, write one netCDF."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from threadpoolctl import threadpool_limits

from robrep.io.xrio import write_netcdf
from robrep.runtime import compute_device
from robrep.study.compare import compare_stores

from _log import redirect_to_log

with redirect_to_log(snakemake), threadpool_limits(snakemake.threads):  # numpy's BLAS
    p, wc = snakemake.params, snakemake.wildcards
    ds = compare_stores(
        snakemake.input.a,
        snakemake.input.b,
        metrics=p.metrics,
        intervals=p.intervals,
        seed=p.seed,
        rbf_sigma=p.rbf_sigma,
        knn_k=p.knn_k,
        svcca_variance=p.svcca_variance,
        permutations=p.permutations,
        by_class=p.by_class,
        attrs={"analysis": wc.analysis, "dataset": wc.dataset, "pair": wc.pair},
        device=compute_device(snakemake.config["device"]),
        progress=print,  # each measure's time, into the job's log
    )
    write_netcdf(ds, snakemake.output[0])
    print(ds)
