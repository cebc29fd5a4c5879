"""Rule extract: stream one model checkpoint's probed-layer activations into a Zarr store."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from robrep.activation_store import extract_to_store
from robrep.data import evaluation_subset, read_splits
from robrep.training import evaluation_spec, pick_device, software_versions
from robrep.weights import load_model

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p, wc = snakemake.params, snakemake.wildcards
    torch.set_num_threads(snakemake.threads)
    device = pick_device(p.device)
    model, meta = load_model(snakemake.input.weights, device)
    splits = read_splits(snakemake.input.splits)
    idx = evaluation_subset(splits.y_test, p.n_examples, p.subset_seed)
    attack = evaluation_spec(p.attack, "steps") if wc.inputs == "pgd" else None
    extract_to_store(
        model,
        splits.x_test[idx],
        splits.y_test[idx],
        idx,
        snakemake.output[0],
        model.probe_layers(p.layers),
        attrs={
            "model_id": f"{wc.dataset}/{wc.arch}/{wc.method_id}/seed{wc.seed}",
            "dataset": wc.dataset,
            "arch": wc.arch,
            "method_id": wc.method_id,
            "seed": int(wc.seed),
            "checkpoint": wc.checkpoint,
            "epoch": meta["epoch"],
            "inputs": wc.inputs,
            "split": "test",
            "versions": software_versions(),
        },
        attack=attack,
        attack_seed=int(wc.seed),
        chunk_rows=p.chunk_rows,
        batch_size=p.batch_size,
        dtype=p.dtype,
        compressor=p.compressor,
        max_chunk_features=p.max_chunk_features,
        pool=p.pool,
        device=device,
    )
    print(f"wrote {snakemake.output[0]}")
