"""Seed baselines, block-score jackknife intervals and the paper's claims, on real stores of one
untrained model saved under several configurations (identical models) and on synthetic
summaries."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from robrep.learn.data import pass_orders
from robrep.study.compare import compare_stores
from robrep.study.findings import paper_claims
from robrep.study.scores import block_score_interval, block_structure_score
from robrep.study.summary import _stack, measure_view, seed_baselines
from robrep.study.verdicts import (
    EXCEEDS,
    INCONCLUSIVE,
    NO_BASELINE,
    OPPOSITE,
    WITHIN,
    verdict_table,
)

from helpers.stores import extract

METHODS = {
    "standard": {"method": "standard", "id": "standard", "norm": None, "eps": 0.0},
    "pgd-linf-eps0.1": {"method": "pgd", "id": "pgd-linf-eps0.1", "norm": "linf", "eps": 0.1},
}


@pytest.fixture(scope="module")
def identical_stores(tiny_model, tmp_path_factory):
    """The same model's store saved as standard and robust, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("stores")
    order = pass_orders(64, 2, split_seed=0)
    stores = {}
    for method_id, method in METHODS.items():
        for seed in (0, 1):
            meta = {
                "model_id": f"{method_id}{seed}",
                "dataset": "digits",
                "arch": "convnet",
                "method_id": method_id,
                "method": method,
                "seed": seed,
                "checkpoint": "final",
                "epoch": 8,
                "inputs": "benign",
            }
            stores[(method_id, seed)] = extract(
                tiny_model,
                root / f"{method_id}{seed}.zarr",
                64,
                ids=np.arange(64),
                meta=meta,
                pass_order=order,
                cka_batch_size=16,
            )
    return stores


def _compare(stores, analysis, a, b, **kw):
    """One comparison as minibatch CKA reads it (`measure_view`, what the summaries are built
    on)."""
    ds = compare_stores(stores[a], stores[b], ["minibatch_cka"], intervals=True, **kw)
    ds.attrs["analysis"] = analysis
    return measure_view(ds, "minibatch_cka")


ROBUST = "pgd-linf-eps0.1"


def _seed_design(stores):
    """Robust vs standard at seeds 0 and 1, and each configuration's seed pair."""
    return [
        _compare(stores, "robust_vs_standard", (ROBUST, 0), ("standard", 0)),
        _compare(stores, "robust_vs_standard", (ROBUST, 1), ("standard", 1)),
        _compare(stores, "seeds", ("standard", 0), ("standard", 1)),
        _compare(stores, "seeds", (ROBUST, 0), (ROBUST, 1)),
    ]


def test_seed_baseline_of_identical_models_is_zero_effect(identical_stores):
    s = identical_stores
    parts = [
        *_seed_design(s),
        _compare(s, "cross_layer", ("standard", 0), ("standard", 0)),
    ]
    ds = _stack(parts)
    base = seed_baselines(ds)
    vs = np.flatnonzero(ds.analysis.values == "robust_vs_standard")
    n = int(ds.n_layers_a.values[0])
    effect = base.seed_effect.values[vs][:, :n]
    np.testing.assert_allclose(base.seed_baseline.values[vs][:, :n], 1.0, atol=1e-6)
    np.testing.assert_allclose(effect, 0.0, atol=1e-6)
    assert np.all(base.seed_effect_low.values[vs][:, :n] <= 1e-6)
    assert np.all(base.seed_effect_high.values[vs][:, :n] >= -1e-6)
    others = np.flatnonzero(ds.analysis.values != "robust_vs_standard")
    assert np.isnan(base.seed_effect.values[others]).all()  # seeds, cross_layer: no baseline


def test_one_seed_has_no_baseline(identical_stores):
    s = identical_stores
    ds = _stack([_compare(s, "robust_vs_standard", ("pgd-linf-eps0.1", 0), ("standard", 0))])
    assert np.isnan(seed_baselines(ds).seed_effect.values).all()


def test_block_score_interval_contains_the_point_estimate(identical_stores):
    part = _compare(identical_stores, "cross_layer", ("standard", 0), ("standard", 0), seed=2)
    point = block_structure_score(part.similarity.values)
    low, high = block_score_interval(part)
    assert low <= point <= high and low < high
    assert block_score_interval(part) == (low, high)  # deterministic
    part.attrs["intervals"] = "none"
    assert np.isnan(block_score_interval(part)).all()


def _summary(block, spread, methods, seeds, low=None, high=None):
    n = len(block)
    data = {"block_score": ("model", np.asarray(block, float))}
    data["class_cka_spread"] = ("model", np.asarray(spread, float))
    if low is not None:
        data["block_score_low"] = ("model", np.asarray(low, float))
        data["block_score_high"] = ("model", np.asarray(high, float))
    coords = {
        "model_dataset": ("model", ["digits"] * n),
        "model_arch": ("model", ["convnet"] * n),
        "model_method_id": ("model", methods),
        "model_seed": ("model", seeds),
    }
    return xr.Dataset(data, coords=coords)


def _one_measure(ds):
    """A per-measure summary as `aggregate` holds it: along `measure`, here linear CKA alone."""
    return ds.expand_dims(measure=["minibatch_cka"])


def test_claims_held_against_the_seed_range():
    methods = ["standard", "standard", "pgd", "pgd"]
    ds = _summary([0.5, 0.52, 0.2, 0.21], [0.1, 0.1, 0.3, 0.31], methods, [0, 1, 0, 1])
    got = {row["claim"]: row for row in paper_claims(_one_measure(ds))}
    assert got["block_structure"]["difference"] == pytest.approx(-0.305)
    assert got["block_structure"]["seed_noise"] == pytest.approx(0.02)
    assert got["block_structure"]["verdict"] == EXCEEDS
    assert got["block_structure"]["margin"] == pytest.approx(0.305 - 0.02)  # no interval here
    assert got["specialisation_class_cka"]["verdict"] == OPPOSITE
    assert got["specialisation_class_cka"]["margin"] == pytest.approx(0.205 - 0.01)
    close = _summary([0.5, 0.6, 0.45, 0.5], [0.1] * 4, methods, [0, 1, 0, 1])
    rows = paper_claims(_one_measure(close))
    assert {r["verdict"] for r in rows} == {WITHIN}
    block = next(r for r in rows if r["claim"] == "block_structure")
    assert block["margin"] == pytest.approx(0.075 - 0.1)  # inside the seed range: negative
    one = _summary([0.5, 0.2], [0.1, 0.2], ["standard", "pgd"], [0, 0])
    assert {r["verdict"] for r in paper_claims(_one_measure(one))} == {NO_BASELINE}


def test_claim_beyond_the_seed_range_but_not_its_interval_is_inconclusive():
    """Beyond the seed range but not clear of the jackknife intervals: inconclusive, not a side,
    with the interval's reach past 0 as a negative margin; clear of both, a side whose margin is
    the nearer yardstick."""
    methods = ["standard", "standard", "pgd", "pgd"]
    ds = _summary(
        [0.5, 0.5, 0.4, 0.4], [0.1] * 4, methods, [0, 1, 0, 1], low=[0.3] * 4, high=[0.6] * 4
    )
    row = next(r for r in paper_claims(_one_measure(ds)) if r["claim"] == "block_structure")
    assert row["low"] < 0 < row["high"] and row["verdict"] == INCONCLUSIVE
    assert row["margin"] == pytest.approx(-(0.6 - 0.3))  # -high: the interval reaches 0.3 past 0
    low = [0.45, 0.45, 0.35, 0.35]
    clear = _summary(
        [0.5, 0.5, 0.4, 0.4],
        [0.1] * 4,
        methods,
        [0, 1, 0, 1],
        low=low,
        high=[0.55, 0.55, 0.42, 0.42],
    )
    row = next(r for r in paper_claims(_one_measure(clear)) if r["claim"] == "block_structure")
    assert row["verdict"] == EXCEEDS and row["high"] == pytest.approx(-0.03)
    assert row["margin"] == pytest.approx(0.03)  # the interval's distance from 0 < |d| - noise


def test_seed_band_spans_the_seed_pairs_intervals(identical_stores):
    """The figures' band behind a curve: the seed pairs of its configurations, with their
    jackknife intervals (so one seed pair still gives a band around its value)."""
    from robrep.study.figures import _seed_band

    s = identical_stores
    robust = "pgd-linf-eps0.1"
    parts = [
        _compare(s, "robust_vs_standard", (robust, 0), ("standard", 0)),
        _compare(s, "seeds", ("standard", 0), ("standard", 1)),
    ]
    ds = _stack(parts)
    n = int(ds.n_layers_a.values[0])
    low, high = _seed_band(ds, np.array([0]), n)
    assert np.all(low <= 1 + 1e-6) and np.all(high >= 1 - 1e-6)
    np.testing.assert_allclose(low, np.diagonal(ds.cka_ci_low.values[1])[:n])
    none = _stack([parts[0]])
    assert np.isnan(_seed_band(none, np.array([0]), n)).all()


def test_block_score_seed_range():
    from robrep.study.summary import seed_range

    methods = ["standard", "standard", "pgd", "pgd", "trades"]
    ds = _summary([0.5, 0.52, 0.2, np.nan, 0.1], [0.0] * 5, methods, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(seed_range(ds, "block_score"), [0.02, 0.02, np.nan, np.nan, np.nan])


def test_deeper_layers_claim_of_identical_models_is_within_noise(identical_stores):
    """Claim 2 on real comparisons of identical models: no effect, interval around 0."""
    parts = _seed_design(identical_stores)
    ds = _stack(parts)
    ds = xr.merge([ds, seed_baselines(ds)])
    ds = ds.assign_coords(
        model_dataset=("model", ["digits"] * 4),
        model_arch=("model", ["convnet"] * 4),
        model_method_id=("model", ["standard", "standard", ROBUST, ROBUST]),
        model_seed=("model", [0, 1, 0, 1]),
    )
    (row,) = [r for r in paper_claims(_one_measure(ds)) if r["claim"] == "deeper_layers"]
    assert row["method_id"] == ROBUST and row["verdict"] == WITHIN
    assert row["margin"] <= 0
    assert row["difference"] == pytest.approx(0, abs=1e-6)
    assert row["low"] <= 0 <= row["high"] and row["standard"] == pytest.approx(1, abs=1e-6)


def test_claims_without_their_analysis_are_left_out():
    """No cross-layer comparisons (block score and class spread NaN): no row for those claims;
    the probe claim reads relative depth from the probes' own layer count."""
    methods = ["standard", "standard", "pgd", "pgd"]
    ds = _summary([np.nan] * 4, [np.nan] * 4, methods, [0, 1, 0, 1])
    accuracy = np.array([[0.5, 0.9, 0.95], [0.5, 0.9, 0.97], [0.5, 0.8, 0.8], [0.5, 0.8, 0.82]])
    ds["probe_accuracy"] = (("model", "layer_a"), accuracy)
    ds["probe_n_layers"] = ("model", [3] * 4)
    (row,) = paper_claims(_one_measure(ds))
    assert row["claim"] == "specialisation_probe"
    # deeper layers: relative depth 0.5 and 1 of 3 layers
    assert row["standard"] == pytest.approx(0.93) and row["robust"] == pytest.approx(0.805)
    assert row["verdict"] == EXCEEDS


def test_a_comparison_of_the_old_layout_is_refused(identical_stores, tmp_path):
    """A comparison written before the measure dimension (similarity(layer_a, layer_b), linear
    CKA alone) is refused by name, with the command that recomputes it, not stacked into wrong
    numbers."""
    from robrep.io.xrio import write_netcdf
    from robrep.study.summary import aggregate

    old = _compare(identical_stores, "seeds", ("standard", 0), ("standard", 1))
    assert old.similarity.dims == ("layer_a", "layer_b")
    path = tmp_path / "old.nc"
    write_netcdf(old, path)
    with pytest.raises(
        ValueError, match=rf"{path} lacks similarity\('measure', .*--forcerun similarity"
    ):
        aggregate([path], [])


def test_the_verdict_table_counts_configurations_per_claim_and_measure():
    """What a run prints when it ends (and aggregate's log holds, instead of a dict per row)."""
    rows = [
        {"claim": "block_structure", "measure": "minibatch_cka", "verdict": EXCEEDS},
        {"claim": "block_structure", "measure": "minibatch_cka", "verdict": WITHIN},
        {"claim": "block_structure", "measure": "minibatch_cka", "verdict": EXCEEDS},
        {"claim": "deeper_layers", "measure": "minibatch_rbf_cka", "verdict": OPPOSITE},
    ]
    lines = verdict_table(rows).splitlines()
    assert lines[0].split() == [
        "claim",
        "measure",
        "exceeds",
        "within",
        "seed",
        "noise",
        "opposite",
    ]
    assert lines[1].split() == ["block_structure", "minibatch_cka", "2", "1", "0"]
    assert lines[2].split() == ["deeper_layers", "minibatch_rbf_cka", "0", "0", "1"]
    assert "no findings" in verdict_table([])
