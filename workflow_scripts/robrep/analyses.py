"""The paper's analyses as data: one comparison -> an xarray Dataset; many -> the summary Dataset.

`compare_stores` computes the configured metrics between two activation stores. `aggregate` stacks
every comparison along a `comparison` dimension (with analysis/dataset/arch/method/norm/eps/seed/
checkpoint coordinates for both sides) and adds per-model scalar summaries and accuracies along a
`model` dimension. The summaries are defined next to their functions below and in the README.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .activation_store import ActivationStore, check_aligned
from .similarity import full_data_similarity, minibatch_cka

ADV_THRESHOLD = 0.9


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
) -> xr.Dataset:
    """All layer pairs of two stores under every metric, with minibatch-CKA HSIC terms and CIs."""
    same = Path(path_a).resolve() == Path(path_b).resolve()
    sa = ActivationStore(path_a)
    sb = sa if same else ActivationStore(path_b)
    check_aligned([sa, sb])
    la, lb = sa.select(), sb.select()
    values: dict[str, np.ndarray] = {}
    data_vars: dict[str, Any] = {}
    if "minibatch_cka" in metrics:
        res = minibatch_cka(la, None if same else lb, batch_size=batch_size)
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
    meta = {k: v for k, v in (attrs or {}).items()}
    for side, store in (("a", sa), ("b", sb)):
        for key in ("dataset", "arch", "method_id", "seed", "checkpoint", "epoch", "inputs"):
            meta[f"{key}_{side}"] = store.attrs.get(key, "")
        meta[f"store_{side}"] = str(store.path)
        meta[f"attack_{side}"] = json.dumps(store.attrs.get("attack"))
    meta["n_examples"] = len(sa)
    meta["batch_size"] = batch_size
    return xr.Dataset(
        data_vars,
        coords={"metric": list(metrics), "layer_a": sa.layers, "layer_b": sb.layers},
        attrs=meta,
    )


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to netCDF-4 (h5netcdf) under a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def write_zarr(ds: xr.Dataset, path: str | Path) -> None:
    """Write `ds` to a Zarr store under a temporary name, then swap it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Scalar summaries.


def block_structure_score(cka: np.ndarray, min_size: int = 2) -> float:
    """Strongest contiguous block: max over layer segments of (within - across) mean similarity.

    For every contiguous segment of at least `min_size` layers that leaves at least one layer
    outside it, take the mean off-diagonal similarity inside the segment minus the mean
    similarity between the segment and the other layers; the score is the largest such contrast.
    A matrix of uniform similarity scores 0; a block-diagonal one scores near its block contrast.
    """
    c = np.asarray(cka, dtype=float)
    n = c.shape[0]
    if c.shape != (n, n) or n < min_size + 1:
        raise ValueError(
            f"block score needs a square matrix with > {min_size} layers, got {c.shape}"
        )
    best = -np.inf
    for start in range(n):
        for stop in range(start + min_size, n + 1):
            if stop - start == n:
                continue
            inside = np.zeros(n, bool)
            inside[start:stop] = True
            block = c[np.ix_(inside, inside)]
            k = inside.sum()
            within = (block.sum() - np.trace(block)) / (k * (k - 1))
            across = c[np.ix_(inside, ~inside)].mean()
            best = max(best, within - across)
    return float(best)


def diagonal(cka: np.ndarray) -> np.ndarray:
    """Per-layer similarity of the same layer in two stores (square matrices only)."""
    c = np.asarray(cka)
    return np.diagonal(c[: min(c.shape), : min(c.shape)])


def depth_below(diag: np.ndarray, threshold: float = ADV_THRESHOLD) -> float:
    """Relative depth (0 = first probed layer, 1 = last) where `diag` first falls below threshold.

    Returns NaN when it never does.
    """
    d = np.asarray(diag)
    below = np.flatnonzero(d < threshold)
    if len(below) == 0:
        return float("nan")
    return float(below[0] / max(len(d) - 1, 1))


# ----------------------------------------------------------------------------------------------
# Aggregation.


def _method_coords(method_id: str, methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    m = methods.get(method_id, {})
    return {
        "method": m.get("method", method_id),
        "norm": m.get("norm") or "none",
        "eps": float(m.get("eps", 0.0)),
    }


def aggregate(
    comparison_files: Sequence[str | Path],
    metrics_files: Mapping[str, str | Path],
    methods: Mapping[str, Mapping[str, Any]],
    metric: str = "minibatch_cka",
    attrs: Mapping[str, Any] | None = None,
) -> tuple[xr.Dataset, list[dict[str, Any]]]:
    """Stack comparisons along `comparison`, add per-model summaries; also return accuracy rows.

    `metrics_files` maps model ids (dataset/arch/method_id/seed{seed}) to metrics.json paths;
    `metric` is the similarity used for the scalar summaries.
    """
    parts = [xr.load_dataset(f, engine="h5netcdf") for f in comparison_files]
    if not parts:
        raise ValueError("no comparisons to aggregate")
    n_a = max(p.sizes["layer_a"] for p in parts)
    n_b = max(p.sizes["layer_b"] for p in parts)
    metric_names = list(parts[0].metric.values)
    sim = np.full((len(parts), len(metric_names), n_a, n_b), np.nan)
    names_a = np.full((len(parts), n_a), "", dtype=object)
    names_b = np.full((len(parts), n_b), "", dtype=object)
    coords: dict[str, list] = {}
    for c, part in enumerate(parts):
        la, lb = part.sizes["layer_a"], part.sizes["layer_b"]
        sim[c, :, :la, :lb] = part["similarity"].sel(metric=metric_names).values
        names_a[c, :la] = part.layer_a.values
        names_b[c, :lb] = part.layer_b.values
        row = {
            "analysis": part.attrs["analysis"],
            "dataset": part.attrs["dataset_a"],
            "n_layers_a": la,
            "n_layers_b": lb,
        }
        for side, suffix in (("a", ""), ("b", "_b")):
            row.update(
                {
                    f"arch{suffix}": part.attrs[f"arch_{side}"],
                    f"method_id{suffix}": part.attrs[f"method_id_{side}"],
                    f"seed{suffix}": int(part.attrs[f"seed_{side}"]),
                    f"checkpoint{suffix}": part.attrs[f"checkpoint_{side}"],
                    f"epoch{suffix}": int(part.attrs[f"epoch_{side}"]),
                    f"inputs{suffix}": part.attrs[f"inputs_{side}"],
                }
            )
            row.update(
                {
                    f"{k}{suffix}": v
                    for k, v in _method_coords(row[f"method_id{suffix}"], methods).items()
                }
            )
        for key, value in row.items():
            coords.setdefault(key, []).append(value)
    ds = xr.Dataset(
        {"similarity": (("comparison", "metric", "layer_a", "layer_b"), sim)},
        coords={
            "comparison": np.arange(len(parts)),
            "metric": metric_names,
            "layer_a": np.arange(n_a),
            "layer_b": np.arange(n_b),
            "layer_name_a": (("comparison", "layer_a"), names_a.astype(str)),
            "layer_name_b": (("comparison", "layer_b"), names_b.astype(str)),
            **{k: ("comparison", np.asarray(v)) for k, v in coords.items()},
        },
    )
    summary, accuracy = model_summaries(ds, metrics_files, methods, metric)
    ds = xr.merge([ds, summary])
    ds.attrs.update(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (attrs or {}).items()}
    )
    ds.attrs["summary_metric"] = metric
    return ds, accuracy


def _matrix(ds: xr.Dataset, c: int, metric: str) -> np.ndarray:
    la, lb = int(ds.n_layers_a[c]), int(ds.n_layers_b[c])
    return ds["similarity"].sel(metric=metric).isel(comparison=c).values[:la, :lb]


def model_summaries(
    ds: xr.Dataset,
    metrics_files: Mapping[str, str | Path],
    methods: Mapping[str, Mapping[str, Any]],
    metric: str,
) -> tuple[xr.Dataset, list[dict[str, Any]]]:
    """Per-model block score, robust-vs-standard mean diagonal, adversarial depth, best-final drop."""
    model_ids = list(metrics_files)
    n_layer = ds.sizes["layer_a"]
    block = np.full(len(model_ids), np.nan)
    block_pgd = np.full(len(model_ids), np.nan)
    rvs = np.full(len(model_ids), np.nan)
    adv_depth = np.full(len(model_ids), np.nan)
    drop = np.full((len(model_ids), n_layer), np.nan)
    index = {mid: i for i, mid in enumerate(model_ids)}
    use = metric if metric in ds.metric.values else str(ds.metric.values[0])
    for c in range(ds.sizes["comparison"]):
        mid = f"{ds.dataset.values[c]}/{ds.arch.values[c]}/{ds.method_id.values[c]}/seed{int(ds.seed.values[c])}"
        if mid not in index:
            continue
        i = index[mid]
        analysis = str(ds.analysis.values[c])
        m = _matrix(ds, c, use)
        if analysis == "cross_layer":
            if str(ds.inputs.values[c]) == "benign":
                block[i] = block_structure_score(m)
            else:
                block_pgd[i] = block_structure_score(m)
        elif analysis == "robust_vs_standard":
            rvs[i] = float(np.nanmean(diagonal(m)))
        elif analysis == "benign_vs_adversarial":
            adv_depth[i] = depth_below(diagonal(m))
        elif analysis == "epochs" and str(ds.checkpoint.values[c]) == "best":
            d = 1.0 - diagonal(m)
            drop[i, : len(d)] = d
    accuracy = []
    clean = np.full(len(model_ids), np.nan)
    robust = np.full(len(model_ids), np.nan)
    coords: dict[str, list] = {}
    for i, mid in enumerate(model_ids):
        metrics = json.loads(Path(metrics_files[mid]).read_text())
        clean[i], robust[i] = metrics["test"]["clean_acc"], metrics["test"]["robust_acc"]
        dataset, arch, method_id, seed = mid.split("/")
        row = {
            "model_id": mid,
            "model_dataset": dataset,
            "model_arch": arch,
            "model_method_id": method_id,
            **{f"model_{k}": v for k, v in _method_coords(method_id, methods).items()},
            "model_seed": int(seed.removeprefix("seed")),
        }
        for k, v in row.items():
            coords.setdefault(k, []).append(v)
        accuracy.append(
            {
                **{k.removeprefix("model_"): v for k, v in row.items()},
                "clean_acc": clean[i],
                "robust_acc": robust[i],
                "best_epoch": metrics["best"]["epoch"],
                "best_val_robust_acc": metrics["best"]["val_robust_acc"],
                "attack": json.dumps(metrics["test"]["attack"]),
            }
        )
    summary = xr.Dataset(
        {
            "block_score": ("model", block),
            "block_score_pgd": ("model", block_pgd),
            "robust_vs_standard_mean_diag": ("model", rvs),
            "adversarial_depth_below_0.9": ("model", adv_depth),
            "best_final_drop": (("model", "layer_a"), drop),
            "clean_acc": ("model", clean),
            "robust_acc": ("model", robust),
        },
        coords={"model": np.arange(len(model_ids)), **{k: ("model", v) for k, v in coords.items()}},
    )
    return summary, accuracy
