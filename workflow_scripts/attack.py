"""Rule attack: one model checkpoint's evaluation-attack adversarial examples of the evaluation
subset, stored once for its own pgd store and every transfer store."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.workers import short_spin_environment

os.environ.update(short_spin_environment())  # before torch loads its thread pool
import torch

from robrep.learn.adversarial import craft, write_adversarial
from robrep.learn.attacks import AttackSpec
from robrep.learn.loading import load_on_subset
from robrep.runtime import gpu_budget_mb, pick_device, software_versions

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p, wc = snakemake.params, snakemake.wildcards
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.config["device"])
    m = load_on_subset(
        snakemake.input.weights, snakemake.input.splits, p.n_examples, p.subset_seed, device
    )
    key = m.key
    attack = AttackSpec.from_evaluation(p.attack)
    budget = gpu_budget_mb(device, snakemake.config["resources"])
    microbatch = m.microbatch("attack", p.batch_size, budget)
    print(f"attack batch {p.batch_size}, {microbatch} rows at a time on {device}")
    images = craft(
        m.model, m.images, m.labels, attack, key.seed, p.batch_size, device, True, microbatch
    )
    write_adversarial(
        snakemake.output[0],
        images,
        m.labels,
        m.sample_ids,
        attack,
        key.seed,
        p.batch_size,
        attrs={
            "source_model_id": key.id,
            "dataset": key.dataset,
            "checkpoint": wc.checkpoint,
            "epoch": m.meta["epoch"],
            "split": "test",
            "versions": software_versions(),
        },
    )
    print(f"wrote {snakemake.output[0]}")
