"""Rule autoattack: clean, evaluation-PGD and AutoAttack accuracy of one final model on a fixed
subset of the test split, one checksummed JSON."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from robrep.checksums import write_json
from robrep.data import evaluation_subset, read_splits
from robrep.ids import ModelKey
from robrep.robustness import evaluate_robustness
from robrep.runtime import pick_device, software_versions
from robrep.weights import load_model

from _log import redirect_to_log

with redirect_to_log(snakemake):
    logging.basicConfig(stream=sys.stdout, format="%(name)s: %(message)s")
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.config["device"])
    model, meta = load_model(snakemake.input.weights, device)
    splits = read_splits(snakemake.input.splits)
    idx = evaluation_subset(splits.y_test, p.n_examples, p.subset_seed)
    key = ModelKey(meta["dataset"], meta["arch"], meta["method"]["id"], meta["seed"])
    result = evaluate_robustness(
        model,
        splits.x_test[idx],
        splits.y_test[idx],
        p.evaluation,
        p.version,
        int(meta["seed"]),
        device,
        p.batch_size,
    )
    result.update(model=key.id, sample_ids=idx.tolist(), versions=software_versions())
    write_json(result, snakemake.output[0])
    print({k: v for k, v in result.items() if k != "sample_ids"})
