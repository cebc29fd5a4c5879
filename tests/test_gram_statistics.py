"""Gram statistics: minibatch CKA from stored Gram triangles equals the feature path, passes are
shared by every store of a dataset, and stores with other minibatches are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robrep.learn.data import pass_orders
from robrep.similarity import (
    GramMaker,
    minibatch_cka_grams,
    minibatch_cka_multi,
    pack_gram,
    pass_batches,
    row_block_gram,
    triangle_size,
    unpack_gram,
    upper_gram,
)
from robrep.store.extract import extract_to_store
from robrep.store.format import MismatchedStoresError, StoreLayout
from robrep.store.read import ActivationStore, check_aligned

from helpers.reference import hsic1_textbook
from helpers.stores import STORE_META, images
from helpers.stores import extract as extract_store


class ArrayGrams:
    """A `GramSource` of float64 Grams of in-memory arrays, packed by hand: independent of the
    engine's products, offsets and float32 arithmetic."""

    def __init__(self, layers, batches):
        self.names = [f"l{i}" for i in range(len(layers))]
        self.batch_sizes = [len(rows) for _, rows in batches]
        self.batch_passes = [p for p, _ in batches]
        flats = [x.reshape(len(x), -1).astype(np.float64) for x in layers]
        flats = [x - x.mean(0) for x in flats]
        self.packed = []
        for _, rows in batches:
            upper, diag = np.triu_indices(len(rows), 1), np.arange(len(rows))
            grams = [x[rows] @ x[rows].T for x in flats]
            self.packed.append(np.stack([np.r_[k[upper], k[diag, diag]] for k in grams], axis=1))

    def read(self, batch, out):
        packed = self.packed[batch]
        target = out[: packed.size].reshape(packed.shape)
        target[:] = packed
        return target


def textbook_passes(xs, ys, batches):
    """Minibatch CKA of every layer pair over the given batches, HSIC_1 as Song et al. write it."""
    xs = [x.reshape(len(x), -1).astype(np.float64) for x in xs]
    ys = [y.reshape(len(y), -1).astype(np.float64) for y in ys]
    xs, ys = [x - x.mean(0) for x in xs], [y - y.mean(0) for y in ys]
    out = np.zeros((len(xs), len(ys)))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            terms = np.zeros(3)
            for _, rows in batches:
                k, l_ = x[rows] @ x[rows].T, y[rows] @ y[rows].T
                terms += [hsic1_textbook(k, l_), hsic1_textbook(k, k), hsic1_textbook(l_, l_)]
            out[i, j] = terms[0] / np.sqrt(terms[1] * terms[2])
    return out


def test_upper_gram_is_the_upper_triangle_of_the_product():
    x = torch.randn(37, 11)
    full = x @ x.T
    for got in [upper_gram(x)] + [row_block_gram(x, blocks) for blocks in (1, 3, 4, 8)]:
        torch.testing.assert_close(got, full.triu(), rtol=1e-5, atol=1e-4)
        assert torch.all(got.tril(-1) == 0)
    assert triangle_size(37) == 37 * 38 // 2


def test_packing_round_trips_and_puts_the_strict_triangle_first():
    k = np.arange(16, dtype=np.float32).reshape(4, 4)
    k = k + k.T
    packed = pack_gram(np.triu(k))
    np.testing.assert_array_equal(
        packed, [k[0, 1], k[0, 2], k[0, 3], k[1, 2], k[1, 3], k[2, 3], *np.diag(k)]
    )
    np.testing.assert_array_equal(pack_gram(torch.from_numpy(np.triu(k))), packed)
    np.testing.assert_array_equal(unpack_gram(packed, 4), k)


def test_gram_maker_is_the_gram_of_offset_rows():
    """+1000 offsets: the first batch's mean is subtracted, and kept for later batches."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 30, 6, 5)).astype(np.float32) + 1000
    maker = GramMaker()
    for batch in x:
        got = unpack_gram(maker("layer", torch.from_numpy(batch)), 30)
        offset = maker.offsets["layer"].astype(np.float64)
        np.testing.assert_allclose(offset, x[0].reshape(30, -1).mean(0), atol=1e-3)
        centred = batch.reshape(30, -1) - offset
        np.testing.assert_allclose(got, centred @ centred.T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_gram_path_equals_textbook_and_feature_path(passes):
    """Several passes, an unequal last batch (103 = 4 x 24 + 7) and +1000 offsets: CKA from
    packed Grams (rounded to float32, as stored) equals the textbook to 1e-7, and the feature path
    (float32 products) to 1e-6."""
    rng = np.random.default_rng(passes)
    n = 103
    a = [
        rng.normal(size=(n, 5, 3)).astype(np.float32) + 1000,
        rng.normal(size=(n, 9)).astype(np.float32),
    ]
    b = [(a[0].reshape(n, -1)[:, :7] + rng.normal(size=(n, 7))).astype(np.float32) - 1000]
    order = pass_orders(n, passes, split_seed=5)
    batches = pass_batches(order, 24)
    batches = [(p, np.arange(n)[rows]) for p, rows in batches]
    want = textbook_passes(a, b, batches)
    got = minibatch_cka_grams([ArrayGrams(a, batches), ArrayGrams(b, batches)], [(0, 1), (0, 0)])
    np.testing.assert_allclose(got[(0, 1)].cka, want, atol=1e-7, rtol=0)
    np.testing.assert_allclose(np.diag(got[(0, 0)].cka), 1.0, atol=1e-12)
    features = minibatch_cka_multi([a, b], [(0, 1), (0, 0)], batch_size=24, pass_order=order)
    for pair in [(0, 1), (0, 0)]:
        np.testing.assert_allclose(features[pair].cka, got[pair].cka, atol=1e-6, rtol=0)
        np.testing.assert_allclose(features[pair].cross, got[pair].cross, rtol=1e-5, atol=1e-6)
        assert features[pair].passes == got[pair].passes == [p for p, _ in batches]
        assert got[pair].per_pass().shape == (passes, *got[pair].cka.shape)
    # Pass-to-pass spread: each pass alone is a minibatch estimate of its own.
    if passes > 1:
        assert not np.allclose(got[(0, 1)].per_pass()[0], got[(0, 1)].per_pass()[1])


def test_pass_orders_depend_on_split_seed_and_pass_only():
    first = pass_orders(50, 3, split_seed=0)
    np.testing.assert_array_equal(first[0], np.arange(50))
    np.testing.assert_array_equal(first, pass_orders(50, 3, split_seed=0))
    np.testing.assert_array_equal(first[:2], pass_orders(50, 2, split_seed=0))
    assert not np.array_equal(first[1], pass_orders(50, 2, split_seed=1)[1])
    for row in first:
        np.testing.assert_array_equal(np.sort(row), np.arange(50))


def extract(model, path, order, cka_batch_size=16, **kw):
    n = order.shape[1]
    return extract_store(
        model, path, n, ids=np.arange(n), pass_order=order, cka_batch_size=cka_batch_size, **kw
    )


def test_store_grams_equal_feature_path(tiny_model, tmp_path):
    """Extraction's Gram statistics give the CKA of the stored features (3 passes, last batch of
    5 rows), and the store records its passes and minibatches."""
    order = pass_orders(53, 3, split_seed=0)
    store = ActivationStore(extract(tiny_model, tmp_path / "s.zarr", order))
    np.testing.assert_array_equal(store.pass_order, order)
    assert list(store.batch_sizes) == [16, 16, 16, 5] * 3
    assert list(store.batch_passes) == [0] * 4 + [1] * 4 + [2] * 4
    got = minibatch_cka_grams([store.grams()], [(0, 0)])[(0, 0)]
    want = minibatch_cka_multi([store.select()], [(0, 0)], batch_size=16, pass_order=order)[(0, 0)]
    np.testing.assert_allclose(got.cka, want.cka, atol=1e-6, rtol=0)
    assert got.names_a == store.layers


def test_feature_layers_are_chosen_apart_from_gram_layers(tiny_model, tmp_path):
    order = pass_orders(40, 1, split_seed=0)
    path = extract(tiny_model, tmp_path / "s.zarr", order, features=["stage2.0", "head.logits"])
    store = ActivationStore(path)
    assert store.feature_layers == ["stage2.0", "head.logits"]
    assert store.layers == tiny_model.probe_layers("blocks")
    with pytest.raises(
        KeyError, match="'stage1.0' has no raw features.*with raw features: stage2.0"
    ):
        store.layer("stage1.0")
    # Features of a layer without Grams (a leaf of 'all') are kept too.
    leaf = [n for n in tiny_model.probe_layers("all") if n not in store.layers][0]
    other = ActivationStore(extract(tiny_model, tmp_path / "o.zarr", order, features=[leaf]))
    assert other.feature_layers == [leaf] and other.layer(leaf).shape[0] == 40


def test_stores_with_other_minibatches_are_refused(tiny_model, tmp_path):
    base = pass_orders(40, 2, split_seed=0)
    a = ActivationStore(extract(tiny_model, tmp_path / "a.zarr", base))
    same = ActivationStore(
        extract(tiny_model, tmp_path / "b.zarr", pass_orders(40, 2, split_seed=0))
    )
    check_aligned([a, same])
    other_seed = ActivationStore(extract(tiny_model, tmp_path / "c.zarr", pass_orders(40, 2, 1)))
    with pytest.raises(MismatchedStoresError, match=r"different minibatches: .*a\.zarr.*c\.zarr"):
        check_aligned([a, other_seed])
    other_batch = ActivationStore(extract(tiny_model, tmp_path / "d.zarr", base, cka_batch_size=8))
    with pytest.raises(MismatchedStoresError, match=r"batch 16.*d\.zarr \(batch 8"):
        check_aligned([a, other_batch])


def test_pass_order_must_be_permutations(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"pass_order\[1\] is not a permutation"):
        extract(tiny_model, tmp_path / "s.zarr", np.stack([np.arange(20), np.zeros(20, int)]))
    assert not (tmp_path / "s.zarr").exists() and not list(tmp_path.iterdir())


def test_comparison_records_its_minibatches(tiny_model, tmp_path):
    from robrep.study.compare import compare_stores

    order = pass_orders(40, 2, split_seed=0)
    attrs = STORE_META
    n = 40
    path = extract_to_store(
        tiny_model,
        images(n),
        np.arange(n) % 10,
        np.arange(n),
        tmp_path / "s.zarr",
        tiny_model.probe_layers("blocks"),
        attrs,
        StoreLayout(chunk_rows=16, cka_batch_size=16),
        features=["stage3.0", "head.logits"],
        pass_order=order,
        progress=False,
    )
    ds = compare_stores(path, path, ["minibatch_cka", "svcca"], intervals=True)
    np.testing.assert_array_equal(ds.pass_order.values, order)
    assert ds.attrs["batch_size"] == 16 and ds.attrs["passes"] == 2
    assert list(ds.batch_size.values) == [16, 16, 8, 16, 16, 8]
    assert list(ds.measure.values) == ["minibatch_cka"]
    assert ds.cka_per_pass.dims == ("measure", "pass", "layer_a", "layer_b")
    assert ds.cka_per_pass.shape == (1, 2, 8, 8)
    assert list(ds.full_metric.values) == ["svcca"] and ds.full_similarity.shape == (1, 2, 2)
    np.testing.assert_allclose(np.diagonal(ds.similarity.sel(measure="minibatch_cka")), 1.0)


@pytest.mark.parametrize("b", [4, 7, 16])
def test_packed_permutation_is_the_permuted_gram(rng, b):
    from robrep.similarity import pack_gram, packed_permutation

    x = rng.standard_normal((b, 5))
    gram = x @ x.T
    order = rng.permutation(b)
    packed = pack_gram(np.triu(gram))
    np.testing.assert_array_equal(
        packed[packed_permutation(b, order)], pack_gram(np.triu(gram[order][:, order]))
    )


def test_permutation_null_of_a_layer_with_itself_is_far_below_one(tiny_model, tmp_path):
    from robrep.study.compare import compare_stores

    path = extract(
        tiny_model, tmp_path / "s.zarr", pass_orders(64, 2, split_seed=0), meta=STORE_META
    )
    ds = compare_stores(path, path, ["minibatch_cka"], intervals=False, permutations=20, seed=3)
    ds = ds.sel(measure="minibatch_cka")
    cka = ds.similarity.values
    upper = ds.cka_null_upper.values
    np.testing.assert_allclose(np.diagonal(cka), 1.0, atol=1e-6)
    assert np.all(np.diagonal(upper) < 0.5), np.diagonal(upper)
    assert np.all(upper < cka + 1e-9)  # nothing here is below its own null
    told = []  # a comparison says how long each measure took (the job's log, issue 25)
    again = compare_stores(
        path,
        path,
        ["minibatch_cka"],
        intervals=False,
        permutations=20,
        seed=3,
        progress=told.append,
    )
    assert len(told) == 1 and told[0].startswith("minibatch_cka: ") and "20 null draws" in told[0]
    np.testing.assert_array_equal(again.cka_null_upper.values[0], upper)  # reproducible
    other = compare_stores(path, path, ["minibatch_cka"], intervals=False, permutations=20, seed=4)
    assert not np.array_equal(other.cka_null_upper.values[0], upper)
    assert ds.attrs["null_permutations"] == 20 and ds.attrs["null_level"] == 0.95


def test_permutation_null_centres_on_zero(tiny_model, tmp_path):
    from robrep.similarity import minibatch_cka_null

    path = extract(tiny_model, tmp_path / "s.zarr", pass_orders(64, 2, split_seed=0))
    grams = ActivationStore(path).grams()
    null = minibatch_cka_null(grams, grams, 50, seed=0)
    assert null.shape == (50, len(grams.names), len(grams.names))
    assert abs(float(np.mean(null))) < 0.1, float(np.mean(null))


def test_permutation_null_draws_are_minibatch_cka_with_side_b_shuffled_in_each_batch(rng):
    """Each draw is minibatch CKA of a against b with b's rows shuffled within every batch (its
    seeded permutations, drawn batch by batch), over 2 passes with an unequal last batch and a
    final one of 2 rows that no draw uses."""
    from robrep.similarity import NULL_STREAM, minibatch_cka_null

    n, draws, seed = 50, 3, 7
    layers_a = [rng.standard_normal((n, 6)), rng.standard_normal((n, 3, 2)) ** 2]
    layers_b = [rng.standard_normal((n, 4)) + layers_a[0][:, :4], rng.standard_normal((n, 5))]
    batches = _row_batches(np.stack([np.arange(n), rng.permutation(n)]), 16)
    assert [len(rows) for _, rows in batches] == [16, 16, 16, 2] * 2
    with pytest.warns(UserWarning, match="dropping the final batch of 2 rows"):
        got = minibatch_cka_null(
            ArrayGrams(layers_a, batches), ArrayGrams(layers_b, batches), draws, seed
        )
    draw_rng = np.random.default_rng(np.random.SeedSequence([seed, NULL_STREAM]))
    used = [(p, rows) for p, rows in batches if len(rows) >= 4]
    orders = [[draw_rng.permutation(len(rows)) for _ in range(draws)] for _, rows in used]
    assert got.shape == (draws, 2, 2)
    for v in range(draws):
        shuffled = [(p, rows[order[v]]) for (p, rows), order in zip(used, orders, strict=True)]
        want = minibatch_cka_grams(
            [ArrayGrams(layers_a, used), ArrayGrams(layers_b, shuffled)], [(0, 1)]
        )[(0, 1)].cka
        np.testing.assert_allclose(got[v], want, rtol=1e-9, atol=1e-12)
    unshuffled = minibatch_cka_grams(
        [ArrayGrams(layers_a, used), ArrayGrams(layers_b, used)], [(0, 1)]
    )[(0, 1)].cka
    assert not np.allclose(got[0], unshuffled, atol=1e-3)


@pytest.mark.parametrize("b, m", [(4, 4), (9, 5), (16, 7)])
def test_packed_subset_is_the_gram_of_the_subset(rng, b, m):
    from robrep.similarity import packed_permutation

    x = rng.standard_normal((b, 5))
    gram = x @ x.T
    rows = np.sort(rng.choice(b, m, replace=False))
    packed = pack_gram(np.triu(gram))
    np.testing.assert_array_equal(
        packed[packed_permutation(b, rows)], pack_gram(np.triu(gram[rows][:, rows]))
    )


def _row_batches(pass_order, batch_size):
    """`pass_batches` with every batch's rows as an index array."""
    return [
        (p, np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows)
        for p, rows in pass_batches(pass_order, batch_size)
    ]


def _class_batches(batches, labels, c):
    """`batches` restricted to the rows of class c (those with >= 4 of them)."""
    out = []
    for p, rows in batches:
        sub = rows[labels[rows] == c]
        if len(sub) >= 4:
            out.append((p, sub))
    return out


def test_class_conditional_cka_is_minibatch_cka_of_each_class_rows(rng):
    """Each class's CKA pools the HSIC_1 terms of that class's rows of every batch, exactly as
    minibatch CKA of batches made of those rows alone (a class with < 4 rows in a batch skips it)."""
    from robrep.similarity import minibatch_cka_by_class

    n, labels = 90, rng.integers(0, 3, 90)
    labels[:3] = 2  # the first batch has few of class 2 at the end
    layers = [rng.standard_normal((n, 6)), rng.standard_normal((n, 3, 2)) ** 2]
    batches = _row_batches(np.stack([np.arange(n), rng.permutation(n)]), 20)
    grams = ArrayGrams(layers, batches)
    batch_labels = [labels[rows] for _, rows in batches]
    got = minibatch_cka_by_class(grams, None, batch_labels, [0, 1, 2])
    for c in range(3):
        sub = _class_batches(batches, labels, c)
        want = minibatch_cka_grams([ArrayGrams(layers, sub)], [(0, 0)])[(0, 0)].cka
        np.testing.assert_allclose(got[c], want, rtol=1e-10)


def test_class_conditional_cka_equals_unconditional_when_classes_share_one_representation(rng):
    """Labels independent of the features, one map from layer to layer for every class: each
    class's CKA is the unconditional value (exactly 1 for an isometry, within sampling error
    otherwise)."""
    from robrep.similarity import minibatch_cka_by_class

    n = 4000
    x = rng.standard_normal((n, 12))
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    layers = [x, 3 * x @ q, np.tanh(x @ rng.standard_normal((12, 8)))]
    labels = rng.integers(0, 2, n)
    batches = _row_batches(np.arange(n)[None], 400)
    grams = ArrayGrams(layers, batches)
    batch_labels = [labels[rows] for _, rows in batches]
    by_class = minibatch_cka_by_class(grams, None, batch_labels, [0, 1])
    overall = minibatch_cka_grams([grams], [(0, 0)])[(0, 0)].cka
    np.testing.assert_allclose(by_class[:, 0, 1], 1.0, atol=1e-10)
    np.testing.assert_allclose(by_class, np.broadcast_to(overall, by_class.shape), atol=0.03)


def test_compare_stores_by_class(tiny_model, tmp_path):
    from robrep.study.compare import compare_stores

    order = pass_orders(64, 2, split_seed=0)
    path = extract(tiny_model, tmp_path / "s.zarr", order, cka_batch_size=64, meta=STORE_META)
    ds = compare_stores(path, path, ["minibatch_cka"], intervals=False, by_class=True)
    n_layers = len(ActivationStore(path).layers)
    assert ds.cka_by_class.shape == (10, n_layers, n_layers)
    assert list(ds["class"].values) == list(range(10))
    # labels i % 10: 6 or 7 examples of each class per batch of 64
    for c in range(10):
        np.testing.assert_allclose(np.diagonal(ds.cka_by_class.values[c]), 1.0, atol=1e-6)
    assert np.isfinite(ds.cka_by_class.values).all()
    plain = compare_stores(path, path, ["minibatch_cka"], intervals=False)
    assert "cka_by_class" not in plain and "class" not in plain.coords
