"""One comparison: every layer pair of two activation stores under every configured metric.

The result is a small xarray Dataset: `similarity(metric, layer_a, layer_b)`, minibatch CKA's
per-batch HSIC terms and bootstrap interval, and as attributes the coordinates of both stores
(dataset, arch, method, norm, eps, seed, checkpoint, epoch, inputs), read from the stores' own
metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .activation_store import ActivationStore, check_aligned
from .similarity import full_data_similarity, minibatch_cka

STORE_COORDS = ("dataset", "arch", "method_id", "seed", "checkpoint", "epoch", "inputs")


def method_coords(method: Mapping[str, Any]) -> dict[str, Any]:
    """method / norm / eps of a resolved method as stored in metadata (`none`, 0 for standard)."""
    return {
        "method": method["method"],
        "norm": method.get("norm") or "none",
        "eps": float(method.get("eps") or 0.0),
    }


def compare_stores(
    path_a: str | Path,
    path_b: str | Path,
    metrics: Sequence[str],
    batch_size: int = 100,
    bootstrap: int = 200,
    seed: int = 0,
    rbf_sigma: float = 0.8,
    svcca_variance: float = 0.99,
    attrs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> xr.Dataset:
    """All layer pairs of two stores under every metric, with minibatch-CKA HSIC terms and CIs.

    Minibatch CKA runs on `device`; the full-data metrics on the CPU (float64 eigensolves).
    """
    same = Path(path_a).resolve() == Path(path_b).resolve()
    sa = ActivationStore(path_a)
    sb = sa if same else ActivationStore(path_b)
    check_aligned([sa, sb])
    la, lb = sa.select(), sb.select()
    values: dict[str, np.ndarray] = {}
    data_vars: dict[str, Any] = {}
    if "minibatch_cka" in metrics:
        res = minibatch_cka(la, None if same else lb, batch_size=batch_size, device=device)
        values["minibatch_cka"] = res.cka
        data_vars["hsic_cross"] = (("batch", "layer_a", "layer_b"), res.cross)
        data_vars["hsic_a"] = (("batch", "layer_a"), res.self_a)
        data_vars["hsic_b"] = (("batch", "layer_b"), res.self_b)
        if bootstrap and res.n_batches >= 2:
            low, high = res.bootstrap(bootstrap, seed)
            data_vars["cka_ci_low"] = (("layer_a", "layer_b"), low)
            data_vars["cka_ci_high"] = (("layer_a", "layer_b"), high)
    full = [m for m in metrics if m != "minibatch_cka"]
    if full:
        values.update(
            full_data_similarity(
                la, None if same else lb, full, rbf_sigma=rbf_sigma, svcca_variance=svcca_variance
            )
        )
    data_vars["similarity"] = (
        ("metric", "layer_a", "layer_b"),
        np.stack([values[m] for m in metrics]),
    )
    meta = dict(attrs or {})
    for side, store in (("a", sa), ("b", sb)):
        missing = [k for k in (*STORE_COORDS, "method") if k not in store.attrs]
        if missing:
            raise ValueError(
                f"activation store {store.path} lacks the metadata {missing} that comparisons "
                f"read (written by an older robrep?); rebuild it: snakemake --forcerun extract"
            )
        for key in STORE_COORDS:
            meta[f"{key}_{side}"] = store.attrs[key]
        for key, value in method_coords(store.attrs["method"]).items():
            meta[f"{key}_{side}"] = value
        meta[f"store_{side}"] = str(store.path)
        meta[f"attack_{side}"] = json.dumps(store.attrs.get("attack"))
    meta["n_examples"] = len(sa)
    meta["batch_size"] = batch_size
    return xr.Dataset(
        data_vars,
        coords={"metric": list(metrics), "layer_a": sa.layers, "layer_b": sb.layers},
        attrs=meta,
    )
