"""Rule probe: linear-probe accuracy of every feature layer of one store, one netCDF."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from threadpoolctl import threadpool_limits

from robrep.io.xrio import write_netcdf
from robrep.study.probes import probe_store

from _log import redirect_to_log

with redirect_to_log(snakemake), threadpool_limits(snakemake.threads):  # numpy's BLAS
    p = snakemake.params
    ds = probe_store(snakemake.input[0], folds=p.folds, seed=p.seed, n_examples=p.n_examples)
    write_netcdf(ds, snakemake.output[0])
    print(ds)
