"""Rule figures: draw every summary figure from the aggregated Dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from robrep.io.xrio import read_netcdf
from robrep.study.figures import FIGURES

from _log import redirect_to_log

with redirect_to_log(snakemake):
    ds = read_netcdf(snakemake.input.summary)
    for name, path in snakemake.output.items():
        FIGURES[name](ds, path)
        print(f"wrote {path}")
