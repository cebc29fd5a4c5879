"""One comparison: every layer pair of two activation stores under every configured metric.

Minibatch CKA comes from the stores' Gram statistics (every Gram layer, every batch of every
pass); the full-data metrics from the raw features of the feature layers. The result is a small
xarray Dataset: `similarity(layer_a, layer_b)` (minibatch CKA),
`full_similarity(full_metric, feature_a, feature_b)`, minibatch CKA's per-batch HSIC terms,
bootstrap interval and per-pass values, the `pass_order` and batch partition it used, and as attributes the coordinates of both stores (dataset, arch, method, norm, eps, seed,
checkpoint, epoch, inputs), read from the stores' own metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from robrep.ids import method_coords
from robrep.similarity.batches import pass_batches
from robrep.similarity.full import full_data_similarity
from robrep.similarity.minibatch import minibatch_cka_grams
from robrep.similarity.result import MINIBATCH_CKA
from robrep.similarity.views import minibatch_cka_by_class, minibatch_cka_null
from robrep.store.read import ActivationStore, check_aligned

if TYPE_CHECKING:
    import torch

NULL_LEVEL = 0.95  # the permutation null's percentile reported as cka_null_upper
STORE_COORDS = ("dataset", "arch", "method_id", "seed", "checkpoint", "epoch", "inputs")


def compare_stores(
    path_a: str | Path,
    path_b: str | Path,
    metrics: Sequence[str],
    bootstrap: int = 200,
    seed: int = 0,
    rbf_sigma: float = 0.8,
    svcca_variance: float = 0.99,
    permutations: int = 0,
    by_class: bool = False,
    attrs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> xr.Dataset:
    """All layer pairs of two stores under every metric, with minibatch-CKA HSIC terms and CIs.

    The minibatches are the stores' own (they must agree: `check_aligned`). Minibatch CKA runs on
    `device` (numpy on the CPU, torch elsewhere); the full-data metrics on the CPU (float64
    eigensolves). With `permutations`, the
    95th percentile of minibatch CKA with side b's examples shuffled within each batch
    (`similarity.views.minibatch_cka_null`, seeded by `seed`) is `cka_null_upper`: values at or below
    it are indistinguishable from unrelated examples. With `by_class`, `cka_by_class` holds
    minibatch CKA restricted to each class's examples (`similarity.views.minibatch_cka_by_class`).
    """
    same = Path(path_a).resolve() == Path(path_b).resolve()
    sa = ActivationStore(path_a)
    sb = sa if same else ActivationStore(path_b)
    check_aligned([sa, sb])
    values: dict[str, np.ndarray] = {}
    data_vars: dict[str, Any] = {
        "pass_order": (("pass", "sample"), sa.pass_order),
        "batch_size": (("stored_batch",), sa.batch_sizes),
        "batch_pass": (("stored_batch",), sa.batch_passes),
    }
    if MINIBATCH_CKA in metrics:
        models = [sa.grams()] if same else [sa.grams(), sb.grams()]
        pair = (0, 0) if same else (0, 1)
        res = minibatch_cka_grams(models, [pair], device)[pair]
        values[MINIBATCH_CKA] = res.cka
        data_vars["hsic_cross"] = (("batch", "layer_a", "layer_b"), res.cross)
        data_vars["hsic_a"] = (("batch", "layer_a"), res.self_a)
        data_vars["hsic_b"] = (("batch", "layer_b"), res.self_b)
        data_vars["cka_per_pass"] = (("pass", "layer_a", "layer_b"), res.per_pass())
        if permutations:
            null = minibatch_cka_null(models[0], models[-1], permutations, seed, device)
            data_vars["cka_null_upper"] = (
                ("layer_a", "layer_b"),
                np.percentile(null, NULL_LEVEL * 100, axis=0),
            )
        if by_class:
            labels = sa.labels
            classes = np.unique(labels)
            batches = pass_batches(sa.pass_order, sa.cka_batch_size)
            batch_labels = [labels[rows] for _, rows in batches]
            other = None if same else models[1]
            by = minibatch_cka_by_class(models[0], other, batch_labels, classes, device)
            data_vars["cka_by_class"] = xr.DataArray(
                by, dims=("class", "layer_a", "layer_b"), coords={"class": classes}
            )
        if bootstrap and res.n_batches >= 2:
            low, high = res.bootstrap(bootstrap, seed)
            data_vars["cka_ci_low"] = (("layer_a", "layer_b"), low)
            data_vars["cka_ci_high"] = (("layer_a", "layer_b"), high)
    if MINIBATCH_CKA in values:
        data_vars["similarity"] = (("layer_a", "layer_b"), values[MINIBATCH_CKA])
    full = [m for m in metrics if m != MINIBATCH_CKA]
    coords = {
        "layer_a": sa.layers,
        "layer_b": sb.layers,
    }
    if full:
        got = _full_data(sa, sb, same, full, rbf_sigma, svcca_variance)
        data_vars["full_similarity"] = (
            ("full_metric", "feature_a", "feature_b"),
            np.stack([got[m] for m in full]),
        )
        coords.update(full_metric=full, feature_a=sa.feature_layers, feature_b=sb.feature_layers)
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
    meta["bootstrap"] = bootstrap if "cka_ci_low" in data_vars else 0
    meta["bootstrap_seed"] = seed
    meta["null_permutations"] = permutations
    meta["null_level"] = NULL_LEVEL
    meta["batch_size"] = sa.cka_batch_size
    meta["passes"] = len(sa.pass_order)
    return xr.Dataset(data_vars, coords=coords, attrs=meta)


def _full_data(
    sa: ActivationStore,
    sb: ActivationStore,
    same: bool,
    metrics: Sequence[str],
    rbf_sigma: float,
    svcca_variance: float,
) -> dict[str, np.ndarray]:
    """Full-data metrics over the feature layers of both stores."""
    if not sa.feature_layers or not sb.feature_layers:
        bare = sa if not sa.feature_layers else sb
        raise ValueError(
            f"metrics {list(metrics)} need raw features, but {bare.path} keeps none "
            f"(activations.features: none); keep features for some layers or drop these metrics"
        )
    return full_data_similarity(
        sa.select(),
        None if same else sb.select(),
        metrics,
        rbf_sigma=rbf_sigma,
        svcca_variance=svcca_variance,
    )
