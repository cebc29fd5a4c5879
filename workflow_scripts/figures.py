"""Rule figures: draw every summary figure from the aggregated Dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import xarray as xr

from robrep.figures import FIGURES

from _log import redirect_to_log

with redirect_to_log(snakemake):
    ds = xr.load_dataset(snakemake.input.summary, engine="h5netcdf")
    for name, path in snakemake.output.items():
        FIGURES[name](ds, path)
        print(f"wrote {path}")
