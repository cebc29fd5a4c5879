"""Minibatch measures from Gram statistics: each equals the field's own implementation on
full-batch float64 features to 1e-8, pools over batches and passes as minibatch CKA pools
HSIC_1, and the stored-Gram path equals the feature path to 1e-6."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.neighbors import NearestNeighbors

from robrep.learn.data import pass_orders
from robrep.similarity import cka_from_grams, pass_batches, rbf_gram
from robrep.similarity.backend import TorchKernels
from robrep.similarity.measures import GRAM_MEASURES, MeasureSettings, gram_measure
from robrep.similarity.minibatch import (
    FeatureGrams,
    minibatch_measure_grams,
)
from robrep.similarity.views import minibatch_measure_null

NEW = [m for m in GRAM_MEASURES if m != "minibatch_cka"]


class Float64Grams:
    """A `GramSource` of the exact float64 Grams of in-memory features, packed by hand (strict
    upper triangle row by row, then the diagonal), with a +offset to show it cancels."""

    def __init__(self, layers, batches, offset=0.0):
        self.names = [f"l{i}" for i in range(len(layers))]
        self.batch_sizes = [len(rows) for _, rows in batches]
        self.batch_passes = [p for p, _ in batches]
        self.packed = []
        for _, rows in batches:
            upper, diag = np.triu_indices(len(rows), 1), np.arange(len(rows))
            grams = [(x[rows] + offset) @ (x[rows] + offset).T for x in layers]
            self.packed.append(np.stack([np.r_[k[upper], k[diag, diag]] for k in grams], axis=1))

    def read(self, batch, out):
        return self.packed[batch]


def _features(rng, n=40):
    x = rng.normal(size=(n, 6))
    y = np.tanh(x @ rng.normal(size=(6, 5))) + 0.3 * rng.normal(size=(n, 5))
    return x, y


def mutual_knn_reference(x, y, k):
    """Huh et al. 2024's mutual k-NN alignment, transcribed: the mean over examples of the share
    of their k nearest neighbours (here Euclidean, self excluded) that both spaces agree on."""
    sets = []
    for feats in (x, y):
        nearest = NearestNeighbors(n_neighbors=k + 1).fit(feats).kneighbors(feats)[1]
        sets.append([set(row[row != i][:k]) for i, row in enumerate(nearest)])
    return np.mean([len(a & b) / k for a, b in zip(*sets, strict=True)])


def _hsic_unbiased(k, l_):
    """Huh et al.'s `hsic_unbiased` (Song et al. 2012, eq. 5), transcribed in numpy."""
    m = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = (
        np.sum(kt * lt.T)
        + np.sum(kt) * np.sum(lt) / ((m - 1) * (m - 2))
        - 2 * np.sum(kt @ lt) / (m - 2)
    )
    return value / (m * (m - 3))


def cknna_reference(x, y, k):
    """Huh et al.'s `cknna` (unbiased), transcribed, with Euclidean neighbours and the centred
    linear kernel (robrep's reading; docs/measures.md)."""

    def masked(fa, fb):
        grams, masks = [], []
        for f in (fa, fb):
            f = f - f.mean(0)
            grams.append(f @ f.T)
            d = np.square(f[:, None] - f[None]).sum(-1)
            np.fill_diagonal(d, np.inf)
            mask = np.zeros_like(d)
            np.put_along_axis(mask, np.argsort(d, axis=1)[:, :k], 1.0, axis=1)
            masks.append(mask)
        mask = masks[0] * masks[1]
        return _hsic_unbiased(mask * grams[0], mask * grams[1])

    return masked(x, y) / np.sqrt(masked(x, x) * masked(y, y))


def reference(name, x, y, settings):
    """The field's own value of measure `name` on full features x, y (float64)."""
    if name == "minibatch_cka":
        return cka_from_grams(x @ x.T, y @ y.T, debiased=True)
    if name == "minibatch_rbf_cka":  # Kornblith et al.'s gram_rbf + debiased CKA
        sigma = settings.rbf_sigma
        return cka_from_grams(rbf_gram(x @ x.T, sigma), rbf_gram(y @ y.T, sigma), debiased=True)
    if name == "minibatch_dcor":
        return dcor.u_distance_correlation_sqr(x, y)
    if name == "minibatch_rsa_pearson":
        return pearsonr(pdist(x), pdist(y)).statistic
    if name == "minibatch_rsa_spearman":
        return spearmanr(pdist(x), pdist(y)).statistic
    if name == "minibatch_mutual_knn":
        return mutual_knn_reference(x, y, settings.knn_k)
    if name == "minibatch_cknna":
        return cknna_reference(x, y, settings.knn_k)
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(GRAM_MEASURES))
def test_each_measure_equals_the_reference_on_one_full_batch(name):
    rng = np.random.default_rng(0)
    x, y = _features(rng)
    settings = MeasureSettings(rbf_sigma=0.7, knn_k=5)
    batches = [(0, np.arange(len(x)))]
    sources = [Float64Grams([x], batches, offset=3.0), Float64Grams([y], batches, offset=-2.0)]
    got = minibatch_measure_grams(sources, name, settings, [(0, 1)])[(0, 1)]
    want = reference(name, x, y, settings)
    assert np.isfinite(want)
    np.testing.assert_allclose(got.cka[0, 0], want, atol=1e-8, rtol=0)


def test_mutual_knn_on_a_hand_computed_case():
    """Five points on a line and a reordering of them: with k = 1 the nearest neighbours are
    A: 0→1, 1→0, 2→1 (distance 1 vs 2), 3→4, 4→3 and B: 0→1, 1→0, 2→3, 3→2, 4→3, so examples 0,
    1 and 4 agree: 3 of 5."""
    a = np.array([[0.0], [1.0], [2.0], [10.0], [10.5]])
    b = np.array([[0.0], [0.4], [5.0], [5.3], [7.0]])
    batches = [(0, np.arange(5))]
    settings = MeasureSettings(knn_k=1)
    sources = [Float64Grams([a], batches), Float64Grams([b], batches)]
    got = minibatch_measure_grams(sources, "minibatch_mutual_knn", settings, [(0, 1)])[(0, 1)]
    assert got.cka[0, 0] == pytest.approx(3 / 5, abs=1e-12)
    assert mutual_knn_reference(a, b, 1) == pytest.approx(3 / 5)


def _textbook_pooled(name, xs, ys, batches, settings):
    """Each batch's terms from full features (references' building blocks), pooled as minibatch
    CKA pools HSIC_1."""
    cross = self_x = self_y = 0.0
    for _, rows in batches:
        x, y = xs[rows], ys[rows]
        if name in ("minibatch_rsa_pearson", "minibatch_rsa_spearman"):
            dx, dy = pdist(x), pdist(y)
            if name == "minibatch_rsa_spearman":
                dx, dy = rankdata(dx), rankdata(dy)
            dx, dy = dx - dx.mean(), dy - dy.mean()
            terms = dx @ dy, dx @ dx, dy @ dy
        elif name == "minibatch_mutual_knn":
            k = settings.knn_k
            terms = mutual_knn_reference(x, y, k) * len(rows) * k, len(rows) * k, len(rows) * k
        else:
            return None
        cross, self_x, self_y = cross + terms[0], self_x + terms[1], self_y + terms[2]
    return cross / np.sqrt(self_x * self_y)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("passes", [1, 2])
def test_gram_path_equals_feature_path_over_batches_and_passes(name, passes):
    """An unequal last batch (61 = 3 x 18 + 7), several passes, +1000 offsets: the measure from
    float32 Grams made from features as extraction makes them equals the same from exact
    float64 Grams to 1e-6, and, where the per-batch terms have a textbook form, the textbook."""
    rng = np.random.default_rng(passes)
    n = 61
    x, y = _features(rng, n)
    order = pass_orders(n, passes, split_seed=3)
    batches = [(p, np.arange(n)[rows]) for p, rows in pass_batches(order, 18)]
    settings = MeasureSettings(knn_k=3)
    layers = [[(x + 1000).astype(np.float32)], [(y - 1000).astype(np.float32)]]
    x, y = layers[0][0] - 1000.0, layers[1][0] + 1000.0  # the float32 features, exactly
    exact = minibatch_measure_grams(
        [Float64Grams([x], batches), Float64Grams([y], batches)], name, settings, [(0, 1)]
    )[(0, 1)]
    features = [FeatureGrams(m, batches) for m in layers]
    got = minibatch_measure_grams(features, name, settings, [(0, 1)])[(0, 1)]
    np.testing.assert_allclose(got.cka, exact.cka, atol=1e-6, rtol=0)
    assert got.passes == [p for p, _ in batches]
    textbook = _textbook_pooled(name, x, y, batches, settings)
    if textbook is not None:
        np.testing.assert_allclose(exact.cka[0, 0], textbook, atol=1e-8, rtol=0)
    low, high = got.interval()
    assert low.shape == (1, 1) and low[0, 0] <= got.cka[0, 0] <= high[0, 0]


@pytest.mark.parametrize("name", NEW)
def test_torch_kernels_give_the_numpy_values(name):
    rng = np.random.default_rng(5)
    x, y = _features(rng, 30)
    batches = [(0, np.arange(15)), (0, np.arange(15, 30))]
    sources = [Float64Grams([x, y], batches), Float64Grams([y], batches)]
    settings = MeasureSettings(knn_k=4)
    cpu = minibatch_measure_grams(sources, name, settings, [(0, 1), (0, 0)])
    torch = minibatch_measure_grams(sources, name, settings, [(0, 1), (0, 0)], TorchKernels("cpu"))
    for pair in cpu:
        np.testing.assert_allclose(torch[pair].cka, cpu[pair].cka, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(GRAM_MEASURES))
def test_measure_of_a_layer_with_itself_is_one_and_its_null_far_below(name):
    rng = np.random.default_rng(2)
    x, y = _features(rng, 48)
    batches = [(0, np.arange(24)), (0, np.arange(24, 48))]
    source = Float64Grams([x, y], batches)
    settings = MeasureSettings(knn_k=4)
    same = minibatch_measure_grams([source], name, settings, [(0, 0)])[(0, 0)]
    np.testing.assert_allclose(np.diag(same.cka), 1.0, atol=1e-12)
    null = minibatch_measure_null(source, source, name, settings, 30, seed=1)
    assert null.shape == (30, 2, 2)
    again = minibatch_measure_null(source, source, name, settings, 30, seed=1)
    np.testing.assert_array_equal(null, again)  # reproducible from the seed
    assert np.percentile(null[:, 0, 0], 95) < 0.6


def test_unknown_measure_and_too_large_k_are_refused():
    with pytest.raises(ValueError, match="unknown minibatch measure 'rsa'.*minibatch_rsa_pearson"):
        gram_measure("rsa")
    rng = np.random.default_rng(0)
    x, _ = _features(rng, 8)
    source = Float64Grams([x], [(0, np.arange(8))])
    with pytest.warns(UserWarning, match="knn_k = 7: a minibatch of 8 examples"):
        got = minibatch_measure_grams([source], "minibatch_mutual_knn", MeasureSettings(knn_k=7))
    assert np.isnan(got[(0, 0)].cka).all()  # its only batch left out: nothing to pool


def test_average_ranks_are_scipys_rankdata_ties_included():
    """Spearman RSA's ranks come from numpy (scipy.stats takes a second to import per job): the
    same numbers as `rankdata(axis=0)`, bit for bit, with ties, constant and single-row columns,
    and a NaN (damaged distances) making its whole column NaN, not a rank."""
    from robrep.similarity.measures import average_ranks

    rng = np.random.default_rng(0)
    damaged = rng.normal(size=(50, 3))
    damaged[7, 1] = np.nan
    cases = [
        rng.normal(size=(4950, 6)),
        rng.integers(0, 12, size=(500, 4)).astype(float),
        np.zeros((9, 2)),
        rng.normal(size=(1, 3)),
        damaged,
    ]
    for values in cases:
        np.testing.assert_array_equal(average_ranks(values), rankdata(values, axis=0))
