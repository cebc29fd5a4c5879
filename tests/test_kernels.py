"""robrep.similarity.backend: the HSIC kernels give the textbook HSIC_1 on numpy and on torch,
block boundaries included, and a comparison on the CPU never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from robrep.learn.data import pass_orders
from robrep.similarity import NumpyKernels, TorchKernels, pack_gram, unpack_gram
from robrep.similarity.hsic import _batch_hsic, _cross_products, _side_terms

from helpers.reference import hsic1_textbook
from helpers.stores import STORE_META, extract

KERNELS = {"numpy": NumpyKernels(), "torch": TorchKernels("cpu")}


def staging(kernels, rows: int, columns: int):
    """A row-block buffer of `rows` rows: small ones make the kernels cross many block edges."""
    if isinstance(kernels, NumpyKernels):
        return np.empty((rows, columns))
    return torch.empty(rows, columns, dtype=torch.float64)


def packed_grams(rng, b: int, layers: int) -> np.ndarray:
    """(triangle_size(b), layers) packed Grams of random features of varied widths."""
    columns = []
    for i in range(layers):
        x = rng.standard_normal((b, 3 + 2 * i)).astype(np.float32)
        columns.append(pack_gram(np.triu(x @ x.T)))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize(("b", "rows"), [(5, 1024), (16, 7), (33, 50), (64, 2016)])
def test_batch_hsic_is_the_textbook_hsic(rng, name, b, rows):
    kernels = KERNELS[name]
    packed = packed_grams(rng, b, 4)
    stats = [kernels.upload(packed[:, :3]), kernels.upload(packed[:, 3:])]
    hsic = _batch_hsic(stats, b, staging(kernels, rows, 4), kernels)
    grams = [unpack_gram(packed[:, i], b).astype(np.float64) for i in range(4)]
    want = np.array([[hsic1_textbook(k, l_) for l_ in grams] for k in grams])
    np.testing.assert_allclose(hsic, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("b", "rows"), [(16, 7), (40, 1024)])
def test_side_terms_and_cross_products_agree_across_backends(rng, b, rows):
    a, other = packed_grams(rng, b, 3), packed_grams(rng, b, 2)
    got = {}
    for name, kernels in KERNELS.items():
        buffer = staging(kernels, rows, 5)
        on_a, on_other = kernels.upload(a), kernels.upload(other)
        side_a = _side_terms(on_a, b, buffer, kernels)
        side_b = _side_terms(on_other, b, buffer, kernels)
        inner = _cross_products(on_a, on_other, b, buffer, kernels)
        order = np.random.default_rng(1).permutation(b)
        got[name] = (
            side_a.cross_hsic(side_b, inner, b),
            side_a.self_hsic(b),
            kernels.to_numpy(side_a.of_rows(order).row_sums),
        )
    for mine, theirs in zip(got["numpy"], got["torch"], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)


def test_a_comparison_is_the_same_on_both_backends(tiny_model, tmp_path):
    from robrep.study.compare import compare_stores

    kw = {"n": 64, "ids": np.arange(64), "meta": STORE_META, "cka_batch_size": 32}
    order = pass_orders(64, 2, split_seed=0)
    a = extract(tiny_model, tmp_path / "a.zarr", pass_order=order, **kw)
    x = np.random.default_rng(5).random((64, 1, 8, 8), dtype=np.float32)
    b = extract(tiny_model, tmp_path / "b.zarr", pass_order=order, x=x, **kw)
    kw = {"permutations": 5, "by_class": True, "seed": 2}
    numpy_side = compare_stores(a, b, ["minibatch_cka"], device="cpu", **kw)
    torch_side = compare_stores(a, b, ["minibatch_cka"], device=KERNELS["torch"], **kw)
    for name in ("similarity", "hsic_cross", "cka_null_upper", "cka_by_class", "cka_ci_low"):
        np.testing.assert_allclose(
            numpy_side[name].values, torch_side[name].values, rtol=1e-10, atol=1e-12, err_msg=name
        )


def test_a_cpu_comparison_never_imports_torch(tiny_model, tmp_path):
    """The whole similarity job's work on the CPU (null, by class, intervals, Spearman RSA,
    full-data metrics) is numpy: no torch, nor scipy.stats (a second's import per job)."""
    path = extract(
        tiny_model,
        tmp_path / "s.zarr",
        48,
        ids=np.arange(48),
        meta=STORE_META,
        pass_order=pass_orders(48, 2, split_seed=0),
        cka_batch_size=16,
        features=["stage3.0", "head.logits"],
    )
    code = (
        "import sys, json\n"
        "from robrep.study.compare import compare_stores\n"
        "from robrep.runtime import compute_device\n"
        f"ds = compare_stores({str(path)!r}, {str(path)!r}, ['minibatch_cka', 'svcca', "
        "'linear_cka_debiased', 'minibatch_rsa_spearman'], permutations=3, by_class=True, "
        "intervals=True, device=compute_device('cpu'))\n"
        "print(json.dumps([[m for m in ('torch', 'scipy.stats') if m in sys.modules], "
        "float(ds.similarity.values.mean()), float(ds.cka_ci_low.values.min())]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, mean, ci_low = json.loads(out.stdout.splitlines()[-1])
    assert loaded == [] and 0 < mean <= 1 and np.isfinite(ci_low)
