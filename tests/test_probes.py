"""Linear probes: separable features are read perfectly, noise at chance, and the dual ridge
probe is the primal one."""

from __future__ import annotations

import numpy as np
import pytest

from robrep.similarity import accumulate_gram
from robrep.study.probes import probe_accuracy, probe_store, ridge_probe_fold

STORE_META = {
    "model_id": "m",
    "dataset": "d",
    "arch": "convnet",
    "method_id": "standard",
    "seed": 0,
    "checkpoint": "final",
    "inputs": "benign",
}


def test_probe_reads_separable_features_perfectly(rng):
    labels = np.repeat(np.arange(4), 40)
    features = rng.standard_normal((160, 300)) * 0.3
    features[np.arange(160), labels] += 3.0  # one feature per class, far apart
    acc = probe_accuracy(accumulate_gram(features), labels, folds=5, seed=0)
    assert acc.shape == (5,)
    assert acc.mean() >= 0.99, acc


def test_probe_of_noise_is_at_chance(rng):
    labels = np.repeat(np.arange(4), 60)
    accs = [
        probe_accuracy(accumulate_gram(rng.standard_normal((240, 50))), labels, 5, seed).mean()
        for seed in range(5)
    ]
    assert abs(np.mean(accs) - 0.25) < 0.06, accs


def test_dual_probe_is_primal_ridge(rng):
    """Predictions from the centred Gram equal ridge regression with an intercept on the
    features (the penalty the fold chose, relative to the mean eigenvalue)."""
    x = rng.standard_normal((60, 8))
    classes = rng.integers(0, 3, 60)
    train, test = np.arange(45), np.arange(45, 60)
    acc, penalty = ridge_probe_fold(accumulate_gram(x), classes, train, test, 3)
    xc = x[train] - x[train].mean(0)
    eig = np.linalg.eigvalsh(xc @ xc.T).clip(0).mean()
    y = np.eye(3)[classes[train]]
    w = np.linalg.solve(xc.T @ xc + penalty * eig * np.eye(8), xc.T @ (y - y.mean(0)))
    pred = (x[test] - x[train].mean(0)) @ w + y.mean(0)
    assert acc == pytest.approx(np.mean(np.argmax(pred, 1) == classes[test]))


def test_probe_warns_about_small_classes_and_refuses_too_few_examples():
    with pytest.warns(UserWarning, match="class 1 has 3 examples, fewer than the 5 probe folds"):
        probe_accuracy(np.eye(13), np.array([0] * 10 + [1] * 3), folds=5)
    with pytest.raises(ValueError, match="every class has fewer examples than the 5 probe folds"):
        probe_accuracy(np.eye(8), np.array([0] * 4 + [1] * 4), folds=5)


def test_probe_store_names_layers_and_chance(tiny_model, tmp_path):
    from helpers.stores import extract

    path = extract(
        tiny_model,
        tmp_path / "s.zarr",
        n=60,
        meta=STORE_META,
        features=["stage3.0", "head.logits"],
    )
    ds = probe_store(path, folds=3, seed=1, progress=False)
    assert list(ds.layer.values) == ["stage3.0", "head.logits"]
    assert ds.probe_accuracy_fold.shape == (2, 3)
    assert ds.attrs["chance"] == pytest.approx(0.1) and ds.attrs["folds"] == 3
    assert (ds.layer_index.values >= 0).all()
    again = probe_store(path, folds=3, seed=1, progress=False)
    np.testing.assert_array_equal(again.probe_accuracy_fold.values, ds.probe_accuracy_fold.values)


@pytest.mark.filterwarnings("ignore:class .* fewer than the 2 probe folds")
def test_probe_store_subset_reads_the_drawn_rows(tiny_model, tmp_path):
    """With n_examples below the store's, the probe is that of the seeded subset's features."""
    from robrep.store.read import ActivationStore
    from robrep.study.probes import _RowSubset

    from helpers.stores import extract

    path = extract(tiny_model, tmp_path / "s.zarr", n=60, meta=STORE_META, features=["stage3.0"])
    layer = ActivationStore(path).layer("stage3.0")
    rows = np.array([1, 5, 7, 40])
    sub = _RowSubset(layer, rows)
    np.testing.assert_array_equal(sub[:, 2:9], layer[:][rows, 2:9])
    np.testing.assert_allclose(accumulate_gram(sub), accumulate_gram(layer[:][rows]))
    ds = probe_store(path, folds=2, seed=0, n_examples=40, progress=False)
    assert ds.attrs["n_examples"] == 40


def test_penalty_choice_is_brute_force_leave_one_out(rng):
    """The closed-form leave-one-out error that picks the penalty equals refitting without each
    example in turn (ridge with an intercept), so the chosen penalty is the brute-force best."""
    from robrep.study.probes import PENALTIES

    x = rng.standard_normal((24, 5))
    classes = rng.integers(0, 3, 24)
    classes[:3] = [0, 1, 2]
    y = np.eye(3)[classes]
    full = x - x.mean(0)
    scale = np.linalg.eigvalsh(full @ full.T).clip(0).mean()  # the penalty's unit, all 24 rows
    keys = []
    for penalty in PENALTIES:
        wrong, squares = 0, 0.0
        for i in range(24):
            keep = np.arange(24) != i
            xm, ym = x[keep].mean(0), y[keep].mean(0)
            xc = x[keep] - xm
            w = np.linalg.solve(xc.T @ xc + penalty * scale * np.eye(5), xc.T @ (y[keep] - ym))
            pred = (x[i] - xm) @ w + ym
            wrong += int(np.argmax(pred) != classes[i])
            squares += float(np.sum((y[i] - pred) ** 2))
        keys.append((wrong / 24, squares / 72))
    train = np.arange(24)
    _, chosen = ridge_probe_fold(accumulate_gram(x), classes, train, train[:5], 3)
    best = min(range(len(PENALTIES)), key=lambda k: keys[k])
    assert chosen == PENALTIES[best], keys
    assert len(set(keys)) > 1  # the penalties do differ on this data
