"""Linear probes: how well a linear classifier reads the class from each stored layer.

One reading of the paper's "specialisation" (its exact definition is not public): a layer is
specialised to the task as far as a linear read-out recovers the label from it (Alain & Bengio
2016, "Understanding intermediate layers using linear classifier probes"). The probe is ridge
regression onto one-hot labels (a least-squares linear classifier), its penalty chosen per fold by
exact leave-one-out error on the training part, scored by k-fold cross-validated accuracy
(stratified folds, scikit-learn). It works in the dual, from the layer's N x N linear Gram
(`similarity.full.accumulate_gram`, features read in bounded blocks), so the raw features of any width
are probed exactly, never projected or held whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from sklearn.model_selection import StratifiedKFold

from robrep.similarity.full import accumulate_gram
from robrep.store.read import ActivationStore

# Ridge penalties tried, relative to the mean eigenvalue of the training Gram.
PENALTIES = np.logspace(-6, 1, 8)


def _centred(k: np.ndarray, rows: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Gram entries K[rows, train] of features centred by the mean over `train`."""
    mean_row = k[:, train].mean(1)
    mean_all = mean_row[train].mean()
    return k[np.ix_(rows, train)] - mean_row[rows, None] - mean_row[None, train] + mean_all


def ridge_probe_fold(
    gram: np.ndarray, classes: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int
) -> tuple[float, float]:
    """Test accuracy of the ridge probe fitted on `train` (penalty of least leave-one-out error
    on `train`, ties to the smaller squared error), and the penalty chosen (relative)."""
    y = np.eye(n_classes)[classes[train]]
    y_mean = y.mean(0)
    y_c = y - y_mean
    eigval, eigvec = np.linalg.eigh(_centred(gram, train, train))
    eigval = np.clip(eigval, 0, None)
    scale = eigval.mean() if eigval.mean() > 0 else 1.0
    projected = eigvec.T @ y_c
    best = None
    for penalty in PENALTIES:
        shrink = eigval / (eigval + penalty * scale)
        hat = 1 / len(train) + (eigvec**2) @ shrink  # the intercept's 1/n, then the ridge part
        fitted = eigvec @ (shrink[:, None] * projected)
        loo_residual = (y_c - fitted) / (1 - hat)[:, None]  # exact for a linear smoother
        key = (
            float(np.mean(np.argmax(y - loo_residual, 1) != classes[train])),
            float(np.mean(loo_residual**2)),
        )
        if best is None or key < best[0]:
            best = (key, penalty)
    penalty = best[1]
    dual = eigvec @ (projected / (eigval + penalty * scale)[:, None])
    scores = _centred(gram, test, train) @ dual + y_mean
    return float(np.mean(np.argmax(scores, 1) == classes[test])), float(penalty)


def probe_accuracy(
    gram: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """(folds,) cross-validated accuracies of the ridge probe on the examples of `gram`
    (N x N linear Gram of a layer's features) with `labels`; folds stratified, shuffled by
    `seed`."""
    values, classes = np.unique(np.asarray(labels), return_inverse=True)
    if folds < 2:
        raise ValueError(f"a linear probe needs at least 2 folds, got {folds}")
    counts = np.bincount(classes)
    if counts.max() < folds:
        raise ValueError(
            f"every class has fewer examples than the {folds} probe folds (largest: "
            f"{counts.max()}); lower probes.folds or raise activations.n_examples"
        )
    if counts.min() < folds:
        warnings.warn(
            f"class {values[np.argmin(counts)].item()!r} has {counts.min()} examples, fewer than "
            f"the {folds} probe folds: some folds test none of it",
            stacklevel=2,
        )
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # sklearn's version of the warning above
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(split.split(np.zeros(len(classes)), classes))
    return np.array(
        [ridge_probe_fold(gram, classes, train, test, len(values))[0] for train, test in splits]
    )


class _RowSubset:
    """Rows `rows` of a layer, as an (len(rows), ...) array `accumulate_gram` reads in column
    blocks."""

    def __init__(self, layer: Any, rows: np.ndarray):
        self.layer, self.rows = layer, rows
        self.shape = (len(rows), *layer.shape[1:])
        self.ndim = layer.ndim
        self.chunks = layer.chunks

    def __getitem__(self, key: slice | tuple[slice, ...]) -> np.ndarray:
        rest = key[1:] if isinstance(key, tuple) else ()
        return self.layer.oindex[(self.rows, *rest)]


def probe_store(
    path: str | Path,
    folds: int = 5,
    seed: int = 0,
    n_examples: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Linear-probe accuracy of every feature layer of a store: `probe_accuracy(layer)` (mean over
    folds) and `probe_accuracy_fold(layer, fold)`, with each layer's position among the store's
    Gram layers (`layer_index`, the summary's layer axis), the chance level and the store's
    coordinates as attributes. With `n_examples` below the store's, a subset drawn by `seed`."""
    store = ActivationStore(path)
    if not store.feature_layers:
        raise ValueError(
            f"linear probes need raw features, but {store.path} keeps none "
            f"(activations.features: none); keep features or set probes.folds: 0"
        )
    labels = store.labels
    rows = np.arange(len(labels))
    if n_examples is not None and n_examples < len(labels):
        rows = np.sort(np.random.default_rng(seed).choice(len(labels), n_examples, replace=False))
        labels = labels[rows]
    accuracies = []
    for i, name in enumerate(store.feature_layers):
        layer = store.layer(name)
        features = layer if len(rows) == len(layer) else _RowSubset(layer, rows)
        accuracies.append(probe_accuracy(accumulate_gram(features), labels, folds, seed))
        if progress:
            print(f"probe {i + 1}/{len(store.feature_layers)} {name}: {accuracies[-1].mean():.3f}")
    acc = np.stack(accuracies)
    meta = {k: store.attrs[k] for k in ("dataset", "arch", "method_id", "seed", "checkpoint")}
    meta.update(attrs or {})
    meta.update(
        folds=folds,
        fold_seed=seed,
        n_examples=len(labels),
        n_layers=len(store.layers),
        chance=float(np.max(np.bincount(np.unique(labels, return_inverse=True)[1])) / len(labels)),
        store=str(store.path),
        inputs=store.attrs["inputs"],
    )
    return xr.Dataset(
        {
            "probe_accuracy": ("layer", acc.mean(1)),
            "probe_accuracy_fold": (("layer", "fold"), acc),
        },
        coords={
            "layer": store.feature_layers,
            "layer_index": (  # -1: a feature layer without Gram statistics
                "layer",
                [store.layers.index(n) if n in store.layers else -1 for n in store.feature_layers],
            ),
        },
        attrs=meta,
    )
