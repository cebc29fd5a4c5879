"""Rule import_model: an external checkpoint read safely into its architecture, tested like a
trained model, written as model.safetensors + metrics.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from robrep.learn.cost import job_microbatch, model_cost
from robrep.learn.data import read_splits
from robrep.learn.external import import_external
from robrep.runtime import gpu_budget_mb, pick_device

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    splits = read_splits(snakemake.input.splits)
    device = pick_device(snakemake.config["device"])
    budget = gpu_budget_mb(device, snakemake.config["resources"])
    microbatch = None  # on the CPU: whole batches
    if budget is not None:
        cost = model_cost(p.entry["arch"], splits.shape[0], splits.shape[-1], len(splits.classes))
        microbatch = job_microbatch(cost, "attack", p.eval_batch_size, budget)
    metrics = import_external(
        p.entry,
        splits,
        Path(snakemake.output.model).parent,
        p.evaluation,
        p.eval_batch_size,
        device,
        microbatch,
    )
    print(f"{p.entry['name']}: test {metrics['test']}")
