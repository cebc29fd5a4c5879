"""Rule figures: draw every summary figure of every dataset from the aggregated Dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from robrep.io.xrio import read_netcdf
from robrep.study.figures import draw

from _log import redirect_to_log

with redirect_to_log(snakemake):
    ds = read_netcdf(snakemake.input.summary)
    formats = snakemake.params.formats
    outputs = iter(snakemake.output)  # per figure, one path per format
    for dataset, name, measure in snakemake.params.drawn:
        paths = {fmt: next(outputs) for fmt in formats}
        draw(name, ds, dataset, paths, measure)
        print(f"wrote {', '.join(paths.values())}")
