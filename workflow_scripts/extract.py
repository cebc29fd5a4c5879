"""Rule extract: stream one model checkpoint's probed-layer activations into a Zarr store."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.workers import short_spin_environment

os.environ.update(short_spin_environment())  # before torch and scipy load their thread pools
import torch
from threadpoolctl import threadpool_limits

from robrep.learn.adversarial import read_adversarial
from robrep.learn.cost import check_fits, gpu_memory, model_cost_of
from robrep.learn.data import pass_orders
from robrep.learn.loading import load_on_subset
from robrep.runtime import gpu_budget_mb, pick_device, software_versions
from robrep.store.extract import extract_to_store
from robrep.store.format import RELEASE_VALUES, StoreLayout

from _log import redirect_to_log

with redirect_to_log(snakemake), threadpool_limits(snakemake.threads):  # BLAS: the Gram syrk
    p, wc = snakemake.params, snakemake.wildcards
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.config["device"])
    m = load_on_subset(
        snakemake.input.weights, snakemake.input.splits, p.n_examples, p.subset_seed, device
    )
    model, meta, key, idx, labels = m.model, m.meta, m.key, m.sample_ids, m.labels
    # A batch's Grams need all its rows' features at once: the CKA batch runs whole.
    budget = gpu_budget_mb(device, snakemake.config["resources"])
    if budget is not None:
        memory = gpu_memory(
            model_cost_of(meta), "extract", p.layout["cka_batch_size"], p.compat == RELEASE_VALUES
        )
        check_fits(memory, p.layout["cka_batch_size"], budget, "activations.cka_batch_size")
    images, adversarial = m.images, {"attack": None}
    if "adversarial" in snakemake.input.keys():  # pgd or transfer inputs: stored examples
        stored = read_adversarial(snakemake.input.adversarial)
        images = stored.matching(idx, labels, snakemake.input.adversarial)
        adversarial = {k: stored.attrs[k] for k in ("attack", "attack_seed", "source_model_id")}
    extract_to_store(
        model,
        images,
        labels,
        idx,
        snakemake.output[0],
        model.probe_layers(p.layers),
        attrs={
            "model_id": key.id,
            "dataset": key.dataset,
            "arch": key.arch,
            "method_id": key.method_id,
            "method": meta["method"],
            "seed": key.seed,
            "checkpoint": wc.checkpoint,
            "epoch": meta["epoch"],
            "inputs": wc.inputs,
            "split": "test",
            "versions": software_versions(),
            **adversarial,
        },
        layout=StoreLayout(**p.layout),
        features=[] if p.features == "none" else model.probe_layers(p.features),
        pass_order=pass_orders(len(idx), p.passes, p.subset_seed),
        device=device,
        compat=p.compat,
    )
    print(f"wrote {snakemake.output[0]}")
