"""Rule autoattack: clean, evaluation-PGD and AutoAttack accuracy of one final model on a fixed
subset of the test split, one checksummed JSON."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from robrep.io.checksums import write_json
from robrep.learn.cost import check_fits, gpu_memory, model_cost_of
from robrep.learn.loading import load_on_subset
from robrep.learn.robustness import evaluate_robustness
from robrep.runtime import gpu_budget_mb, pick_device, software_versions

from _log import redirect_to_log

with redirect_to_log(snakemake):
    logging.basicConfig(stream=sys.stdout, format="%(name)s: %(message)s")
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.config["device"])
    m = load_on_subset(
        snakemake.input.weights, snakemake.input.splits, p.n_examples, p.subset_seed, device
    )
    budget = gpu_budget_mb(device, snakemake.config["resources"])
    if budget is not None:
        memory = gpu_memory(model_cost_of(m.meta), "attack")
        check_fits(memory, p.batch_size, budget, "evaluation.autoattack.batch_size")
    result = evaluate_robustness(
        m.model,
        m.images,
        m.labels,
        p.evaluation,
        p.version,
        m.key.seed,
        device,
        p.batch_size,
        m.microbatch("attack", p.batch_size, budget),
    )
    result.update(model=m.key.id, sample_ids=m.sample_ids.tolist(), versions=software_versions())
    write_json(result, snakemake.output[0])
    print({k: v for k, v in result.items() if k != "sample_ids"})
