"""One comparison: every layer pair of two activation stores under every configured metric.

The minibatch measures (`similarity.measures.GRAM_MEASURES`: linear CKA and the others) come from
the stores' Gram statistics (every Gram layer, every batch of every pass); the full-data metrics
from the raw features of the feature layers. The result is a small xarray Dataset: per minibatch
measure, `similarity(measure, layer_a, layer_b)`, its per-batch terms (`hsic_*`: HSIC_1 for the
kernel measures, the measure's own terms for the others), jackknife interval, per-pass values and
permutation null; `full_similarity(full_metric, feature_a, feature_b)`; the `pass_order` and batch
partition it used; and as attributes the coordinates of both stores (dataset, arch, method, norm,
eps, seed, checkpoint, epoch, inputs), read from the stores' own metadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from robrep.ids import method_coords
from robrep.similarity.batches import pass_batches
from robrep.similarity.full import full_data_similarity
from robrep.similarity.measures import GRAM_MEASURES, MeasureSettings
from robrep.similarity.minibatch import minibatch_measure_grams
from robrep.similarity.result import INTERVAL_LEVEL, INTERVAL_METHOD
from robrep.similarity.views import minibatch_cka_by_class, minibatch_measure_null
from robrep.store.read import ActivationStore, check_aligned

if TYPE_CHECKING:
    import torch

NULL_LEVEL = 0.95  # the permutation null's percentile reported as cka_null_upper
STORE_COORDS = ("dataset", "arch", "method_id", "seed", "checkpoint", "epoch", "inputs")


def compare_stores(
    path_a: str | Path,
    path_b: str | Path,
    metrics: Sequence[str],
    intervals: bool = True,
    seed: int = 0,
    rbf_sigma: float = 0.8,
    knn_k: int = 10,
    svcca_variance: float = 0.99,
    permutations: int = 0,
    by_class: bool = False,
    attrs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """All layer pairs of two stores under every metric, with each minibatch measure's terms
    and intervals.

    The minibatches are the stores' own (they must agree: `check_aligned`). The minibatch
    measures' products run on `device` (numpy on the CPU, torch elsewhere); the full-data metrics
    on the CPU (float64 eigensolves). With `permutations`, the 95th percentile of each minibatch
    measure with side b's examples shuffled within each batch (`views.minibatch_measure_null`,
    seeded by `seed`) is `cka_null_upper`: values at or below it are indistinguishable from
    unrelated examples. With `by_class`, `cka_by_class` holds minibatch linear CKA restricted to
    each class's examples (`similarity.views.minibatch_cka_by_class`). `progress` is told how long
    each measure took (the rule passes `print`, so the job's log shows where its time went).
    """
    same = Path(path_a).resolve() == Path(path_b).resolve()
    sa = ActivationStore(path_a)
    sb = sa if same else ActivationStore(path_b)
    check_aligned([sa, sb])
    for store in (sa, sb):  # before any work: the coordinates come from the stores' metadata
        missing = [k for k in (*STORE_COORDS, "method") if k not in store.attrs]
        if missing:
            raise ValueError(
                f"activation store {store.path} lacks the metadata {missing} that comparisons "
                f"read (written by an older robrep?); rebuild it: snakemake --forcerun extract"
            )
    data_vars: dict[str, Any] = {
        "pass_order": (("pass", "sample"), sa.pass_order),
        "batch_size": (("stored_batch",), sa.batch_sizes),
        "batch_pass": (("stored_batch",), sa.batch_passes),
    }
    measures = [m for m in metrics if m in GRAM_MEASURES]
    settings = MeasureSettings(rbf_sigma=rbf_sigma, knn_k=knn_k)
    models = [sa.grams()] if same else [sa.grams(), sb.grams()]
    said = progress or (lambda line: None)
    per_measure = []
    for m in measures:
        start = time.perf_counter()
        per_measure.append(_measure(models, m, settings, intervals, seed, permutations, device))
        said(f"{m}: {time.perf_counter() - start:.2f} s ({permutations} null draws)")
    measured = xr.concat(per_measure, dim="measure", join="exact")
    data_vars.update({name: measured[name] for name in measured.data_vars})
    data_vars["hsic_pass"] = per_measure[0]["hsic_pass"]  # the pass of each pooled batch
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
    full = [m for m in metrics if m not in GRAM_MEASURES]
    coords = {"measure": measures, "layer_a": sa.layers, "layer_b": sb.layers}
    if full:
        start = time.perf_counter()
        got = _full_data(sa, sb, same, full, rbf_sigma, svcca_variance)
        said(f"{', '.join(full)} (raw features): {time.perf_counter() - start:.2f} s")
        data_vars["full_similarity"] = (
            ("full_metric", "feature_a", "feature_b"),
            np.stack([got[m] for m in full]),
        )
        coords.update(full_metric=full, feature_a=sa.feature_layers, feature_b=sb.feature_layers)
    meta = dict(attrs or {})
    for side, store in (("a", sa), ("b", sb)):
        for key in STORE_COORDS:
            meta[f"{key}_{side}"] = store.attrs[key]
        for key, value in method_coords(store.attrs["method"]).items():
            meta[f"{key}_{side}"] = value
        meta[f"store_{side}"] = str(store.path)
        meta[f"attack_{side}"] = json.dumps(store.attrs.get("attack"))
    meta["n_examples"] = len(sa)
    meta["intervals"] = INTERVAL_METHOD if "cka_ci_low" in data_vars else "none"
    meta["interval_level"] = INTERVAL_LEVEL
    meta["rbf_sigma"] = rbf_sigma
    meta["knn_k"] = knn_k
    meta["null_seed"] = seed
    meta["null_permutations"] = permutations
    meta["null_level"] = NULL_LEVEL
    meta["batch_size"] = sa.cka_batch_size
    meta["passes"] = len(sa.pass_order)
    return xr.Dataset(data_vars, coords=coords, attrs=meta)


def _measure(
    models: Sequence[Any],
    measure: str,
    settings: MeasureSettings,
    intervals: bool,
    seed: int,
    permutations: int,
    device: str | torch.device,
) -> xr.Dataset:
    """One minibatch measure of the stores' Grams (`models`: one store compared with itself, or
    two): its matrix, per-batch terms, per-pass values, jackknife interval and permutation null."""
    pair = (0, len(models) - 1)
    res = minibatch_measure_grams(models, measure, settings, [pair], device)[pair]
    data_vars: dict[str, Any] = {
        "similarity": (("layer_a", "layer_b"), res.cka),
        "hsic_cross": (("batch", "layer_a", "layer_b"), res.cross),
        "hsic_a": (("batch", "layer_a"), res.self_a),
        "hsic_b": (("batch", "layer_b"), res.self_b),
        "hsic_pass": (("batch",), np.asarray(res.passes or [0] * res.n_batches)),
        "cka_per_pass": (("pass", "layer_a", "layer_b"), res.per_pass()),
    }
    if permutations:
        null = minibatch_measure_null(
            models[0], models[-1], measure, settings, permutations, seed, device
        )
        upper = np.percentile(null, NULL_LEVEL * 100, axis=0)
        data_vars["cka_null_upper"] = (("layer_a", "layer_b"), upper)
    if intervals:
        low, high = res.interval()
        data_vars["cka_ci_low"] = (("layer_a", "layer_b"), low)
        data_vars["cka_ci_high"] = (("layer_a", "layer_b"), high)
    return xr.Dataset(data_vars)


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
