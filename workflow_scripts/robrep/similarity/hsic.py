"""HSIC_1 kernels over packed Gram statistics (Song et al. 2012, eq. 5): per batch, float64
products of the stacked strict triangles in row blocks, and their row sums. Used by the minibatch
accumulator and by its views (null, by class). Written once against `backend.Kernels`: numpy on
the CPU, torch on a GPU."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robrep.similarity.backend import Kernels


def _hsic1(inner: Any, sums_product: Any, row_sums_product: Any, b: int) -> Any:
    """HSIC_1 on a batch of b rows from its terms (Song et al. 2012, eq. 5): with K̃ the Gram
    with its diagonal zeroed, b (b - 3) HSIC_1 = tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((b - 1)(b - 2))
    - 2 / (b - 2) 1ᵀK̃L̃1, given the inner product of the strict triangles (tr(K̃L̃) / 2), the
    product of their sums (1ᵀK̃1 1ᵀL̃1) and of their row sums ((K̃1)ᵀL̃1 = 1ᵀK̃L̃1)."""
    return (2 * inner + sums_product / ((b - 1) * (b - 2)) - row_sums_product * (2 / (b - 2))) / (
        b * (b - 3)
    )


def _row_blocks(
    stats: Sequence[Any], b: int, staging: Any, entries: int | None = None
) -> Iterator[tuple[slice, Any]]:
    """The strict triangles of `stats` (each (triangle_size(b), layers) packed Grams where the
    kernels compute, `Kernels.upload`), side by side in float64 row blocks of `staging` (on the
    same device): (entries, block) per block. `entries`: take that many leading rows instead."""
    strict = b * (b - 1) // 2 if entries is None else entries
    step = staging.shape[0]
    for lo in range(0, strict, step):
        hi = min(lo + step, strict)
        start = 0
        for s in stats:
            staging[: hi - lo, start : start + s.shape[1]] = s[lo:hi]
            start += s.shape[1]
        yield slice(lo, hi), staging[: hi - lo, :start]


def _side_terms(packed: np.ndarray, b: int, staging: Any, kernels: Kernels) -> _SideTerms:
    """`_SideTerms` of one side's packed Grams on a batch of b rows: row sums and a square."""
    row_sums = kernels.zeros(b, packed.shape[1])
    squares = kernels.zeros(packed.shape[1])
    for entries, block in _row_blocks([packed], b, staging):
        squares += (block * block).sum(0)
        kernels.add_row_sums(row_sums, block, entries, b)
    return _SideTerms(row_sums, squares, kernels)


def _cross_products(
    packed_a: np.ndarray, packed_b: np.ndarray, b: int, staging: Any, kernels: Kernels
) -> Any:
    """Inner products of the strict triangles of every layer of side a with every layer of side
    b, (a's layers, b's) in float64: a quarter of the stacked product for sides of one width."""
    width = packed_a.shape[1]
    products = kernels.zeros(width, packed_b.shape[1])
    for _, block in _row_blocks([packed_a, packed_b], b, staging):
        kernels.add_products(products, block[:, :width], block[:, width:])
    return products


@dataclass
class _SideTerms:
    """HSIC_1's terms of one side's Grams K̃ (diagonal zeroed) on a batch: the row sums K̃1
    ((b, layers)) and the sums of squares of the strict triangles, tr(K̃K̃) / 2 ((layers,))."""

    row_sums: Any
    squares: Any
    kernels: Kernels

    @property
    def sums(self) -> Any:
        """1ᵀK̃1 of every layer."""
        return self.row_sums.sum(0)

    def of_rows(self, rows: np.ndarray) -> _SideTerms:
        """The terms of the same Grams with their rows relabelled by the permutation `rows`
        (P K̃ Pᵀ 1 = P K̃ 1; the squares do not change)."""
        return _SideTerms(self.kernels.take_rows(self.row_sums, rows), self.squares, self.kernels)

    def cross_hsic(self, other: _SideTerms, inner: Any, b: int) -> np.ndarray:
        """HSIC_1(K, L) of every layer pair, (self's layers, other's), given the inner products
        of their strict triangles (`_cross_products`)."""
        sums_product = self.kernels.outer(self.sums, other.sums)
        hsic = _hsic1(inner, sums_product, self.row_sums.T @ other.row_sums, b)
        return self.kernels.to_numpy(hsic)

    def self_hsic(self, b: int) -> np.ndarray:
        """HSIC_1(K, K) of every layer."""
        sums = self.sums
        hsic = _hsic1(self.squares, sums * sums, (self.row_sums * self.row_sums).sum(0), b)
        return self.kernels.to_numpy(hsic)


def _batch_hsic(stats: Sequence[np.ndarray], b: int, staging: Any, kernels: Kernels) -> np.ndarray:
    """HSIC_1 (`_hsic1`) of every pair of the layers of `stats` (each (triangle_size(b), layers)
    packed Grams) on one batch of b rows, as a float64 matrix over their concatenated layers:
    one product of the stacked triangles (float64, in row blocks through `staging`) and their
    row sums."""
    total = sum(s.shape[1] for s in stats)
    products = kernels.zeros(total, total)
    row_sums = kernels.zeros(b, total)
    for entries, block in _row_blocks(stats, b, staging):
        kernels.add_products(products, block, block)
        kernels.add_row_sums(row_sums, block, entries, b)
    sums = row_sums.sum(0)
    hsic = _hsic1(products, kernels.outer(sums, sums), row_sums.T @ row_sums, b)
    return kernels.to_numpy(hsic)
