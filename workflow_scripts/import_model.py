"""Rule import_model: an external checkpoint read safely into its architecture, tested like a
trained model, written as model.safetensors + metrics.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from robrep.learn.data import read_splits
from robrep.learn.external import import_external
from robrep.runtime import pick_device

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    metrics = import_external(
        p.entry,
        read_splits(snakemake.input.splits),
        Path(snakemake.output.model).parent,
        p.evaluation,
        p.eval_batch_size,
        pick_device(snakemake.config["device"]),
    )
    print(f"{p.entry['name']}: test {metrics['test']}")
