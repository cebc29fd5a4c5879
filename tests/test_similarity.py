"""Correctness of the similarity engine against textbook formulas and invariances."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from robrep.similarity import (
    FULL_METRICS,
    CKAResult,
    DegenerateLayerWarning,
    accumulate_gram,
    cka_from_grams,
    full_data_similarity,
    minibatch_cka,
    minibatch_cka_multi,
)

from helpers.reference import feature_space_linear_cka, hsic1_textbook

FIXTURES = Path(__file__).parent / "fixtures"


def textbook_minibatch_cka(xs, ys, batch_size):
    """Plain float64 loop over consecutive batches with Song et al.'s HSIC_1, as the maths reads.

    HSIC_1 is invariant to adding a constant vector to every row, so the reference centres each
    column once in float64 before forming Grams (which keeps float64 exact for large offsets).
    """
    xs = [x.reshape(len(x), -1).astype(np.float64) for x in xs]
    ys = [y.reshape(len(y), -1).astype(np.float64) for y in ys]
    xs = [x - x.mean(0) for x in xs]
    ys = [y - y.mean(0) for y in ys]
    n = len(xs[0])
    out = np.zeros((len(xs), len(ys)))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            kl = kk = ll = 0.0
            for s in range(0, n, batch_size):
                xb, yb = x[s : s + batch_size], y[s : s + batch_size]
                if len(xb) < 4:
                    break
                k, l_ = xb @ xb.T, yb @ yb.T
                kl += hsic1_textbook(k, l_)
                kk += hsic1_textbook(k, k)
                ll += hsic1_textbook(l_, l_)
            out[i, j] = kl / np.sqrt(kk * ll)
    return out


def layers(rng, n=120, widths=(5, 17, 33)):
    base = rng.normal(size=(n, 8))
    return [
        (base @ rng.normal(size=(8, w)) + 0.5 * rng.normal(size=(n, w))).astype(np.float32)
        for w in widths
    ]


def test_self_similarity_is_one(rng):
    res = minibatch_cka(layers(rng), batch_size=40)
    np.testing.assert_allclose(np.diag(res.cka), 1.0, atol=1e-12)


def test_invariances(rng):
    x = layers(rng)[1]
    y = layers(rng)[2]
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    base = minibatch_cka([x], [y], batch_size=30).cka[0, 0]
    rotated = minibatch_cka([(x @ q).astype(np.float32)], [y], batch_size=30).cka[0, 0]
    scaled = minibatch_cka([x * 7.5], [y], batch_size=30).cka[0, 0]
    shifted = minibatch_cka([x + 3.0], [y], batch_size=30).cka[0, 0]
    assert abs(rotated - base) < 1e-5
    assert abs(scaled - base) < 1e-6
    assert abs(shifted - base) < 1e-6


def test_symmetry(rng):
    a, b = layers(rng), layers(rng, widths=(4, 9))
    ab = minibatch_cka(a, b, batch_size=25).cka
    ba = minibatch_cka(b, a, batch_size=25).cka
    np.testing.assert_allclose(ab, ba.T, atol=1e-12)


def test_matches_textbook_loop_with_large_offset(rng):
    a = [x + 1000.0 for x in layers(rng, n=203)]  # large common offset, float32 storage
    b = layers(rng, n=203, widths=(6, 11))
    with pytest.warns(UserWarning, match="dropping the final batch of 3 rows"):
        got = minibatch_cka(a, b, batch_size=50).cka
    want = textbook_minibatch_cka(a, b, 50)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_gram_form_equals_feature_form(rng):
    x, y = layers(rng, n=60)[1:]
    gram = cka_from_grams(accumulate_gram(x), accumulate_gram(y))
    assert abs(gram - feature_space_linear_cka(x, y)) < 1e-10


def test_feature_blocks_do_not_change_gram(rng):
    x = rng.normal(size=(30, 50))
    whole = accumulate_gram(x)
    blocked = accumulate_gram(x, block_bytes=8 * 30 * 7)  # 7 columns per block
    np.testing.assert_allclose(whole, blocked, atol=1e-10)
    maps = accumulate_gram(x.reshape(30, 5, 10), block_bytes=8 * 30 * 7)  # (N, C, W) layers
    np.testing.assert_allclose(whole, maps, atol=1e-10)


def test_cross_model_equals_concatenated_self(rng):
    a, b = layers(rng, n=100), layers(rng, n=100, widths=(3, 12))
    results = minibatch_cka_multi([a, b], [(0, 1)], batch_size=32)
    together = minibatch_cka(a + b, batch_size=32).cka
    np.testing.assert_allclose(results[(0, 1)].cka, together[: len(a), len(a) :], atol=1e-12)


@pytest.mark.slow
def test_minibatch_approaches_full_data_debiased(rng):
    errors = []
    for n in (200, 3200):
        a = layers(np.random.default_rng(7), n=n)
        full = full_data_similarity(a, None, ["linear_cka_debiased"])["linear_cka_debiased"]
        mb = minibatch_cka(a, batch_size=100).cka
        errors.append(np.abs(mb - full).max())
    assert errors[1] < errors[0]
    assert errors[1] < 0.02


def test_merge_and_interval(rng):
    a = layers(rng, n=200)
    first = minibatch_cka([x[:100] for x in a], batch_size=25)
    second = minibatch_cka([x[100:] for x in a], batch_size=25)
    whole = minibatch_cka(a, batch_size=25)
    np.testing.assert_allclose(first.merge(second).cka, whole.cka, atol=1e-12)
    low, high = whole.interval()
    np.testing.assert_allclose((low + high) / 2, whole.cka, atol=1e-12)  # centred on the estimate
    off = ~np.eye(len(a), dtype=bool)
    assert np.all(high[off] - low[off] > 0)
    np.testing.assert_allclose(np.diagonal(high - low), 0, atol=1e-9)  # CKA(x, x) = 1 always


def test_interval_is_the_textbook_jackknife(rng):
    """Per pass: the delete-one-batch replicates' variance (m - 1) / m Σ (θ_(i) - θ̄)²
    (Efron & Tibshirani 1993, eq. 11.5), averaged over the passes, times t_{m-1}."""
    from scipy import stats

    x, y = rng.standard_normal((120, 5)), rng.standard_normal((120, 4))
    x[:, 0] += y[:, 0]
    order = np.stack([rng.permutation(120) for _ in range(2)])
    res = minibatch_cka([x], [y], 30, pass_order=order)
    passes = np.asarray(res.passes)
    variances = []
    for p in (0, 1):
        rows = np.flatnonzero(passes == p)
        reps = [
            minibatch_cka(
                [x[order[p][np.r_[0 : i * 30, (i + 1) * 30 : 120]]]],
                [y[order[p][np.r_[0 : i * 30, (i + 1) * 30 : 120]]]],
                30,
            ).cka[0, 0]
            for i in range(len(rows))
        ]
        variances.append(3 / 4 * np.sum((np.array(reps) - np.mean(reps)) ** 2))
    half = stats.t.ppf(0.975, 3) * np.sqrt(np.mean(variances))
    low, high = res.interval()
    np.testing.assert_allclose(
        [low[0, 0], high[0, 0]], res.cka[0, 0] + np.r_[-half, half], atol=1e-10
    )
    with pytest.raises(ValueError, match="at least 2 minibatches in every pass; pass 0 has 1"):
        minibatch_cka([x], [y], 120).interval()


def test_shuffled_pass_is_seeded(rng):
    a = layers(rng, n=100)
    r1 = minibatch_cka(a, batch_size=20, shuffle_seed=3).cka
    r2 = minibatch_cka(a, batch_size=20, shuffle_seed=3).cka
    r3 = minibatch_cka(a, batch_size=20).cka
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)


def test_constant_layer_gives_nan_with_named_warning(rng):
    x = layers(rng)[0]
    const = np.ones((len(x), 4), np.float32)
    const_layer = zarr.create_array(store={}, shape=const.shape, dtype="float32")
    const_layer[:] = const
    with pytest.warns(DegenerateLayerWarning, match="'dead'"):
        res = minibatch_cka([x, _Named(const, "dead")], batch_size=40)
    assert np.isnan(res.cka[1]).all() and np.isnan(res.cka[:, 1]).all()
    assert res.cka[0, 0] == pytest.approx(1.0)
    with pytest.warns(DegenerateLayerWarning, match="'dead'"):
        full = full_data_similarity([_Named(const, "dead")], [x], ["linear_cka_debiased", "cca"])
    assert np.isnan(full["cca"]).all()


class _Named(np.ndarray):
    """An ndarray with a `name`, like the activation store's layer handles."""

    def __new__(cls, array, name):
        obj = np.asarray(array).view(cls)
        obj.name = name
        return obj

    def __array_finalize__(self, obj):
        self.name = getattr(obj, "name", None)


def test_errors_on_too_few_or_mismatched_rows(rng):
    with pytest.raises(ValueError, match="at least 4 examples"):
        minibatch_cka([np.ones((3, 2), np.float32)])
    with pytest.raises(ValueError, match="different numbers of examples"):
        minibatch_cka([np.ones((10, 2), np.float32)], [np.ones((11, 2), np.float32)])
    with pytest.raises(ValueError, match="batch_size 2 must be >= 4"):
        minibatch_cka([np.ones((10, 2), np.float32)], batch_size=2)


def test_reads_zarr_arrays(rng, tmp_path):
    a = layers(rng, n=90)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arrays = []
    for i, x in enumerate(a):
        arr = group.create_array(f"l{i}", shape=x.shape, chunks=(30, x.shape[1]), dtype="float32")
        arr[:] = x
        arrays.append(arr)
    np.testing.assert_allclose(
        minibatch_cka(arrays, batch_size=30).cka, minibatch_cka(a, batch_size=30).cka, atol=1e-12
    )


def test_full_data_metrics_identities(rng):
    x, y = layers(rng, n=80, widths=(6, 9))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rot = (x @ q).astype(np.float32)
    metrics = list(FULL_METRICS)
    same = full_data_similarity([x], [rot * 2.0 + 1.0], metrics)
    for m in metrics:
        want = 0.0 if m == "procrustes" else 1.0
        assert same[m][0, 0] == pytest.approx(want, abs=1e-6), m
    other = full_data_similarity([x], [y], metrics)
    for m in metrics:
        assert 0 <= other[m][0, 0] <= (2 if m == "procrustes" else 1), m
    # Procrustes distance is symmetric, PWCCA weights by the first argument only.
    back = full_data_similarity([y], [x], ["procrustes", "cca"])
    assert back["procrustes"][0, 0] == pytest.approx(other["procrustes"][0, 0], abs=1e-9)
    assert back["cca"][0, 0] == pytest.approx(other["cca"][0, 0], abs=1e-9)


def test_cca_against_direct_computation(rng):
    x, y = layers(rng, n=100, widths=(4, 6))
    xc = x.astype(np.float64) - x.mean(0)
    yc = y.astype(np.float64) - y.mean(0)
    qx, _ = np.linalg.qr(xc)
    qy, _ = np.linalg.qr(yc)
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    got = full_data_similarity([x], [y], ["cca", "cca_squared"])
    assert got["cca"][0, 0] == pytest.approx(rho.mean(), abs=1e-9)
    assert got["cca_squared"][0, 0] == pytest.approx((rho**2).mean(), abs=1e-9)


def test_procrustes_against_feature_space_formula(rng):
    x, y = layers(rng, n=50, widths=(5, 8))
    xc = x.astype(np.float64) - x.mean(0)
    yc = y.astype(np.float64) - y.mean(0)
    xc /= np.linalg.norm(xc)
    yc /= np.linalg.norm(yc)
    want = 2 - 2 * np.linalg.svd(xc.T @ yc, compute_uv=False).sum()
    got = full_data_similarity([x], [y], ["procrustes"])["procrustes"][0, 0]
    assert got == pytest.approx(want, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(8, 90),
    batch=st.integers(4, 40),
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_property_matches_textbook(n, batch, widths, seed):
    rng = np.random.default_rng(seed)
    a = [rng.normal(size=(n, w)).astype(np.float32) for w in widths]
    b = [rng.normal(size=(n, 3)).astype(np.float32) + 50]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n < 4 or (n % batch and n // batch == 0 and n % batch < 4):
            return
        res = minibatch_cka(a, b, batch_size=batch)
        want = textbook_minibatch_cka(a, b, batch)
    assert isinstance(res, CKAResult)
    assert res.cka.shape == (len(a), 1)
    np.testing.assert_allclose(res.cka, want, atol=1e-6, rtol=0)


def test_agrees_with_ckatorch_reference():
    """Fixture values from ckatorch 1.0.3 (an independent implementation of Kornblith's CKA and
    Nguyen et al.'s minibatch CKA), produced by `benchmarks/reference_fixture.py` on the data
    regenerated below; see that script for the exact calls."""
    ref = json.loads((FIXTURES / "ckatorch_reference.json").read_text())
    data = np.random.default_rng(ref["seed"])
    x = data.normal(size=(ref["n"], ref["dx"])).astype(np.float32)
    y = (x[:, : ref["dy"]] + 0.7 * data.normal(size=(ref["n"], ref["dy"]))).astype(np.float32)
    mb = minibatch_cka([x], [y], batch_size=ref["batch_size"]).cka[0, 0]
    assert mb == pytest.approx(ref["cka_batch"], abs=1e-6)
    full = full_data_similarity(
        [x], [y], ["linear_cka", "linear_cka_debiased", "rbf_cka"], rbf_sigma=ref["rbf_threshold"]
    )
    assert full["linear_cka"][0, 0] == pytest.approx(ref["cka_linear"], abs=1e-9)
    assert full["linear_cka_debiased"][0, 0] == pytest.approx(ref["cka_linear_unbiased"], abs=1e-9)
    # ckatorch takes torch.median (the lower middle value) of the squared distances where
    # Kornblith's notebook, which robrep follows, takes np.median (the mean of the two middle
    # values); the bandwidths differ in the 7th digit.
    assert full["rbf_cka"][0, 0] == pytest.approx(ref["cka_rbf"], abs=1e-6)


def test_inputs_are_not_modified(rng):
    a = [x + 5.0 for x in layers(rng, n=64)]
    before = [x.copy() for x in a]
    minibatch_cka(a, batch_size=16)
    for x, y in zip(a, before, strict=True):
        np.testing.assert_array_equal(x, y)
