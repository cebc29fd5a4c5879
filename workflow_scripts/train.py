"""Rule train: train one model (standard / PGD-AT / TRADES) with resume, write weights and metrics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.learn.data import read_splits
from robrep.learn.training import TrainSettings, train
from robrep.runtime import pick_device

from _log import redirect_to_log

with redirect_to_log(snakemake):
    settings = TrainSettings(**snakemake.params.settings)
    metrics = train(
        settings,
        read_splits(snakemake.input.splits),
        Path(snakemake.output.model).parent,
        pick_device(snakemake.config["device"]),
        threads=snakemake.threads,
    )
    print(f"test: {metrics['test']}")
