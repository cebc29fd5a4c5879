"""HSIC_1 kernels over packed Gram statistics (Song et al. 2012, eq. 5; U-centring of Székely &
Rizzo 2014): per batch, float64 products of the stacked strict triangles in row blocks, and their
row sums. Used by the minibatch accumulator and by its views (null, by class)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from robrep.similarity.gram import _strict_entries


def _ucenter_(gram: torch.Tensor) -> torch.Tensor:
    """U-centre a float64 Gram in place (zero diagonal) and return it (Székely & Rizzo 2014):
    ⟨ucentred(K), ucentred(L)⟩ / (n (n - 3)) is the unbiased HSIC_1 of Song et al. (2012)."""
    n = gram.shape[0]
    gram.fill_diagonal_(0.0)
    means = gram.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    gram.fill_diagonal_(0.0)
    return gram


def _staging(columns: int) -> torch.Tensor:
    """`_batch_hsic`'s float64 row-block buffer for `columns` stacked layers (about 16 MB)."""
    return torch.empty(max(1024, 2**24 // (8 * columns)), columns, dtype=torch.float64)


def _hsic1(
    inner: torch.Tensor, sums_product: torch.Tensor, row_sums_product: torch.Tensor, b: int
) -> torch.Tensor:
    """HSIC_1 on a batch of b rows from its terms (Song et al. 2012, eq. 5): with K̃ the Gram
    with its diagonal zeroed, b (b - 3) HSIC_1 = tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((b - 1)(b - 2))
    - 2 / (b - 2) 1ᵀK̃L̃1, given the inner product of the strict triangles (tr(K̃L̃) / 2), the
    product of their sums (1ᵀK̃1 1ᵀL̃1) and of their row sums ((K̃1)ᵀL̃1 = 1ᵀK̃L̃1)."""
    return (2 * inner + sums_product / ((b - 1) * (b - 2)) - row_sums_product * (2 / (b - 2))) / (
        b * (b - 3)
    )


def _row_blocks(
    stats: Sequence[np.ndarray], b: int, staging: torch.Tensor, device: torch.device
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The strict triangles of `stats` (each (triangle_size(b), layers) packed Grams), side by
    side in float64 row blocks of `staging`, on `device`: (entries, block) per block."""
    strict = b * (b - 1) // 2
    step = staging.shape[0]
    for lo in range(0, strict, step):
        hi = min(lo + step, strict)
        block, start = staging[: hi - lo], 0
        for s in stats:
            block[:, start : start + s.shape[1]] = torch.from_numpy(s[lo:hi])
            start += s.shape[1]
        yield slice(lo, hi), block[:, :start].to(device)


def _side_terms(
    packed: np.ndarray, b: int, staging: torch.Tensor, device: torch.device
) -> _SideTerms:
    """`_SideTerms` of one side's packed Grams on a batch of b rows: a scatter and a square."""
    row_sums = torch.zeros(b, packed.shape[1], dtype=torch.float64, device=device)
    squares = torch.zeros(packed.shape[1], dtype=torch.float64, device=device)
    rows, cols = _strict_entries(b, device)
    for entries, block in _row_blocks([packed], b, staging, device):
        squares += block.square().sum(0)
        row_sums.index_add_(0, rows[entries], block).index_add_(0, cols[entries], block)
    return _SideTerms(row_sums, squares)


def _cross_products(
    packed_a: np.ndarray,
    packed_b: np.ndarray,
    b: int,
    staging: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Inner products of the strict triangles of every layer of side a with every layer of side
    b, (a's layers, b's) in float64: a quarter of the stacked product for sides of one width."""
    width = packed_a.shape[1]
    products = torch.zeros(width, packed_b.shape[1], dtype=torch.float64, device=device)
    for _, block in _row_blocks([packed_a, packed_b], b, staging, device):
        products.addmm_(block[:, :width].T, block[:, width:])
    return products


@dataclass
class _SideTerms:
    """HSIC_1's terms of one side's Grams K̃ (diagonal zeroed) on a batch: the row sums K̃1
    ((b, layers)) and the sums of squares of the strict triangles, tr(K̃K̃) / 2 ((layers,))."""

    row_sums: torch.Tensor
    squares: torch.Tensor

    @property
    def sums(self) -> torch.Tensor:
        """1ᵀK̃1 of every layer."""
        return self.row_sums.sum(0)

    def cross_hsic(self, other: _SideTerms, inner: torch.Tensor, b: int) -> np.ndarray:
        """HSIC_1(K, L) of every layer pair, (self's layers, other's), given the inner products
        of their strict triangles (`_cross_products`)."""
        sums_product = torch.outer(self.sums, other.sums)
        return _hsic1(inner, sums_product, self.row_sums.T @ other.row_sums, b).cpu().numpy()

    def self_hsic(self, b: int) -> np.ndarray:
        """HSIC_1(K, K) of every layer."""
        sums = self.sums
        return _hsic1(self.squares, sums * sums, self.row_sums.square().sum(0), b).cpu().numpy()


def _batch_hsic(
    stats: Sequence[np.ndarray], b: int, staging: torch.Tensor, device: torch.device
) -> np.ndarray:
    """HSIC_1 (`_hsic1`) of every pair of the layers of `stats` (each (triangle_size(b), layers)
    packed Grams) on one batch of b rows, as a float64 matrix over their concatenated layers:
    one product of the stacked triangles (float64, in row blocks through `staging`) and a
    scatter of their row sums."""
    total = sum(s.shape[1] for s in stats)
    products = torch.zeros(total, total, dtype=torch.float64, device=device)
    row_sums = torch.zeros(b, total, dtype=torch.float64, device=device)
    rows, cols = _strict_entries(b, device)
    for entries, block in _row_blocks(stats, b, staging, device):
        products.addmm_(block.T, block)
        row_sums.index_add_(0, rows[entries], block).index_add_(0, cols[entries], block)
    sums = row_sums.sum(0)
    return _hsic1(products, torch.outer(sums, sums), row_sums.T @ row_sums, b).cpu().numpy()
