"""Rule figures: draw every summary figure of every dataset from the aggregated Dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from robrep.io.xrio import read_netcdf
from robrep.study.figures import draw

from _log import redirect_to_log

with redirect_to_log(snakemake):
    ds = read_netcdf(snakemake.input.summary)
    for (dataset, name, measure), path in zip(
        snakemake.params.drawn, snakemake.output, strict=True
    ):
        draw(name, ds, dataset, path, measure)
        print(f"wrote {path}")
