"""Rule train: train one model (standard / PGD-AT / TRADES) with resume, write weights and metrics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.learn.cost import (
    check_fits,
    gpu_memory,
    job_microbatch,
    model_cost,
    resident_data_mb,
)
from robrep.learn.data import read_splits
from robrep.learn.training import TrainSettings, train
from robrep.runtime import gpu_budget_mb, pick_device

from _log import redirect_to_log

with redirect_to_log(snakemake):
    settings = TrainSettings(**snakemake.params.settings)
    splits = read_splits(snakemake.input.splits)
    device = pick_device(snakemake.config["device"])
    budget = gpu_budget_mb(device, snakemake.config["resources"])
    eval_microbatch = None  # on the CPU: whole batches
    resident = resident_data_mb(splits.x_train.nbytes + splits.y_train.nbytes, budget)
    if budget is not None:
        budget -= resident
        cost = model_cost(settings.arch, splits.shape[0], splits.shape[-1], len(splits.classes))
        check_fits(gpu_memory(cost, "train"), settings.batch_size, budget, "training.batch_size")
        eval_microbatch = job_microbatch(cost, "attack", settings.eval_batch_size, budget)
    metrics = train(
        settings,
        splits,
        Path(snakemake.output.model).parent,
        device,
        threads=snakemake.threads,
        eval_microbatch=eval_microbatch,
        resident_data=resident > 0,
    )
    print(f"test: {metrics['test']}")
