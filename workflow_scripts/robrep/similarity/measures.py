"""Minibatch similarity measures from stored Gram statistics: one registry entry per measure.

Every measure is a function of each batch's b x b Grams K (of X − offset; the offset cancels in
the squared distances d²ᵢⱼ = Kᵢᵢ + Kⱼⱼ − 2Kᵢⱼ and in the batch-centred Gram HKH). A measure maps
each layer's packed Gram to vectors (`GramMeasure.vectors`, numpy on the host) and a batch's
vectors of all layers to a matrix of terms (`GramMeasure.terms`: HSIC_1 of the stacked products,
plain inner products, or CKNNA's masked HSIC_1), so that on batch t the term of layers
i, j is T_t(i, j). Every measure pools exactly as minibatch CKA (Nguyen et al. 2021) pools HSIC_1:

    measure(i, j) = Σ_t T_t(i, j) / sqrt(Σ_t T_t(i, i) · Σ_t T_t(j, j)),

over every batch of every pass, so the jackknife over minibatches and the per-pass values of
`result.CKAResult` hold for each. Formulas and citations: docs/measures.md. Adding a measure is
one `GramMeasure` in `GRAM_MEASURES` (docs/extending.md).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robrep.similarity.backend import Kernels
from robrep.similarity.hsic import _batch_hsic, _hsic1, _row_blocks
from robrep.similarity.result import MINIBATCH_CKA


@dataclass(frozen=True)
class MeasureSettings:
    """The settings of the minibatch measures (config `similarity`)."""

    rbf_sigma: float = 0.8  # RBF bandwidth as a fraction of the median distance (Kornblith 2019)
    knn_k: int = 10  # neighbours of mutual k-NN and CKNNA (Huh et al. 2024 use 10)


Vectors = Callable[[np.ndarray, int, MeasureSettings], np.ndarray]
Terms = Callable[[Sequence[Any], int, Any, Kernels], np.ndarray]


@dataclass(frozen=True)
class GramMeasure:
    """A minibatch similarity measure from Gram statistics.

    `vectors(packed, b, settings)`: a batch's (triangle_size(b), layers) packed Grams to the
    measure's per-layer vectors, (entries, layers) float64; None keeps the stored Grams.
    `terms(vectors of each model, b, staging, kernels)`: the (layers, layers) term matrix over the
    models' concatenated layers. `relabels`: the vectors are packed symmetric matrices of the
    examples, so relabelling the examples is a gather of them (the permutation null's fast path).
    `reads`: the `MeasureSettings` fields it uses. `rows(b)`: the entries of one layer's vectors
    on a batch of b (the job sizes); `products`: how many stacked products of that size its terms
    take (the job sizes)."""

    name: str
    label: str
    citation: str
    vectors: Vectors | None
    terms: Terms
    relabels: bool
    reads: tuple[str, ...] = ()
    rows: Callable[[int], int] = lambda b: b * (b + 1) // 2
    products: int = 1


@functools.lru_cache(maxsize=16)
def _strict_pairs(b: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each packed strict-upper entry of a b x b Gram."""
    return np.triu_indices(b, 1)


def squared_distances(packed: np.ndarray, b: int) -> np.ndarray:
    """(b (b - 1) / 2, layers) float64 squared Euclidean distances of the packed strict-upper
    entries, d²ᵢⱼ = Kᵢᵢ + Kⱼⱼ − 2Kᵢⱼ, clipped at 0 (float32 rounding of near-duplicates)."""
    strict = b * (b - 1) // 2
    diag = np.asarray(packed[strict : strict + b], np.float64)
    rows, cols = _strict_pairs(b)
    d2 = diag[rows] + diag[cols]
    d2 -= 2 * np.asarray(packed[:strict], np.float64)
    return np.maximum(d2, 0.0, out=d2)


def _packed(strict: np.ndarray, diagonal: float, b: int) -> np.ndarray:
    """A packed symmetric matrix from its strict-upper entries and a constant diagonal."""
    return np.concatenate([strict, np.full((b, strict.shape[1]), diagonal)])


def _full_median(d2: np.ndarray, b: int) -> np.ndarray:
    """Per layer, the median of the full b x b matrix of squared distances whose strict-upper
    entries are `d2` (each off-diagonal entry twice, b zeros on the diagonal): `np.median` of the
    square matrix, as Kornblith et al.'s RBF kernel takes it, without building it."""
    n = b * b
    wanted = [(n - 1) // 2, n // 2]  # the middle order statistics (equal for odd n)
    ranks = sorted({max(k - b, 0) // 2 for k in wanted if k >= b})
    ordered = np.partition(d2, ranks, axis=0) if ranks else d2
    values = [ordered[(k - b) // 2] if k >= b else np.zeros(d2.shape[1]) for k in wanted]
    return (values[0] + values[1]) / 2


def rbf_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """Packed Gaussian kernel exp(−d² / (2 σ² median(d²))), σ = `rbf_sigma`, the median over the
    batch (Kornblith et al. 2019, their `gram_rbf`); a batch of identical examples gives NaN."""
    d2 = squared_distances(packed, b)
    median = _full_median(d2, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.exp(-d2 / (2 * settings.rbf_sigma**2 * median))
    return _packed(kernel, 1.0, b)


def distance_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """Packed Euclidean distances |xᵢ − xⱼ|: HSIC_1 of them is the U-centred inner product of
    bias-corrected distance correlation (Székely & Rizzo 2014; Sejdinovic et al. 2013)."""
    return _packed(np.sqrt(squared_distances(packed, b)), 0.0, b)


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean(0)


def rsa_pearson_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """The batch's Euclidean distances (upper triangle), centred: their inner products are
    Pearson's r between two representational distance matrices (Kriegeskorte et al. 2008)."""
    return _centred(np.sqrt(squared_distances(packed, b)))


def rsa_spearman_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """The ranks (ties averaged) of the batch's distances (upper triangle), centred: Spearman's
    rho between two representational distance matrices (Kriegeskorte et al. 2008)."""
    return _centred(average_ranks(squared_distances(packed, b)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Each column's ranks from 1, ties given their mean rank: `scipy.stats.rankdata(values,
    axis=0)`, without the second scipy.stats takes to import in every comparison job. A column
    holding a NaN is all NaN, as rankdata propagates it: damaged distances get no ranks."""
    n = values.shape[0]
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    ranks = np.empty(values.shape)
    for column in range(values.shape[1]):
        # a tie group spans positions [first, last] of the sorted column: its rank is their mean
        starts = np.flatnonzero(np.r_[True, ordered[1:, column] != ordered[:-1, column]])
        bounds = np.r_[starts, n]
        mean_rank = (bounds[:-1] + bounds[1:] + 1) / 2
        ranks[order[:, column], column] = np.repeat(mean_rank, np.diff(bounds))
    ranks[:, np.isnan(values).any(axis=0)] = np.nan
    return ranks


def _squares(strict: np.ndarray, b: int, diagonal: np.ndarray | float) -> np.ndarray:
    """(b, b, layers) symmetric matrices of the layers' strict-upper entries ((b (b - 1) / 2,
    layers)) and their diagonal (a constant, or (b, layers)); layers last, so every write is
    contiguous."""
    rows, cols = _strict_pairs(b)
    out = np.empty((b, b, strict.shape[1]))
    out[rows, cols] = out[cols, rows] = strict
    out[np.arange(b), np.arange(b)] = diagonal
    return out


def _neighbours(d2: np.ndarray, b: int, k: int) -> np.ndarray:
    """(b, b, layers) 0/1: [i, j, l] = 1 where j is among example i's k nearest other examples in
    layer l (d2: the layers' strict-upper squared distances)."""
    nearest = np.argpartition(_squares(d2, b, np.inf), k - 1, axis=1)[:, :k]
    mask = np.zeros((b, b, d2.shape[1]))
    np.put_along_axis(mask, nearest, 1.0, axis=1)
    return mask


def _too_small(b: int, k: int, layers: int, rows: int) -> np.ndarray | None:
    """Zero vectors (no terms: the batch adds nothing to the pooled sums) for a batch of fewer
    than k + 2 examples, with a warning; None for a batch that has k neighbours to rank."""
    if k + 2 <= b:
        return None
    warnings.warn(
        f"similarity.knn_k = {k}: a minibatch of {b} examples has too few to rank k neighbours; "
        f"the neighbour measures leave it out (choose knn_k <= {max(b - 2, 1)} or raise "
        f"activations.cka_batch_size)",
        stacklevel=3,
    )
    return np.zeros((rows, layers))


def knn_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """Each layer's b x b k-nearest-neighbour indicator (Euclidean, self excluded), flattened: the
    inner product of two is Σᵢ |N(i) ∩ N'(i)|, the self term b k, so the pooled measure is the
    mean fraction of shared neighbours, mutual k-NN alignment (Huh et al. 2024)."""
    empty = _too_small(b, settings.knn_k, packed.shape[1], b * b)
    if empty is not None:
        return empty
    return _neighbours(squared_distances(packed, b), b, settings.knn_k).reshape(b * b, -1)


def cknna_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """Per layer, its k-NN indicator and its batch-centred Gram HKH (offset-free), flattened one
    after the other ((2 b², layers)): what `cknna_terms` masks."""
    empty = _too_small(b, settings.knn_k, packed.shape[1], 2 * b * b)
    if empty is not None:
        return empty
    strict = b * (b - 1) // 2
    out = np.empty((2, b, b, packed.shape[1]))
    out[0] = _neighbours(squared_distances(packed, b), b, settings.knn_k)
    gram = _squares(np.asarray(packed[:strict], np.float64), b, packed[strict : strict + b])
    means = gram.mean(0)  # HKH without the two b x b products: K - 1 m' - m 1' + mean
    out[1] = gram - means[None] - means[:, None] + means.mean(0)
    return out.reshape(2 * b * b, -1)


CKNNA_BLOCK_ROWS = 32  # example rows of the b x b matrices per block of `cknna_terms`


def cknna_terms(stats: Sequence[Any], b: int, staging: Any, kernels: Kernels) -> np.ndarray:
    """CKNNA's terms (Huh et al. 2024) of every pair of the concatenated layers: HSIC_1 of the
    centred Grams masked to the neighbours both layers share, A = α ∘ K_i and C = α ∘ K_j with
    α = M_i ∘ M_j (M the k-NN indicators), as Huh et al.'s `hsic_unbiased` takes them.

    The mask factorises, so every term is a product of per-layer matrices, for all pairs at once
    (where the kernels compute) in blocks of example rows: tr(AC) = <M_i∘M_iᵀ∘K_i, M_j∘M_jᵀ∘K_j>,
    1ᵀA1 = <M_i∘K_i, M_j>, 1ᵀC1 = <M_i, M_j∘K_j>, and 1ᵀAC1 = Σ_l (Σ_k P_i,kl M_j,kl)
    (Σ_m M_i,lm P_j,lm) with P = M∘K, one batched product per row l. 1ᵀAC1 is not symmetric in
    (i, j); the pair's term is the one with i <= j, as the pairwise definition takes it."""
    n = b * b
    widths = [s.shape[1] for s in stats]
    total = sum(widths)
    trace, sums, row_products = (kernels.zeros(total, total) for _ in range(3))
    for lo in range(0, b, CKNNA_BLOCK_ROWS):
        hi = min(lo + CKNNA_BLOCK_ROWS, b)
        # rows lo:hi of M and K, and rows lo:hi of their transposes ([l, k] = M[k, l]); K is
        # symmetric, so its transposed rows are its rows
        mask, mask_t, gram = (kernels.zeros(hi - lo, b, total) for _ in range(3))
        start = 0
        for s, width in zip(stats, widths, strict=True):
            m, k = s[:n].reshape(b, b, width), s[n:].reshape(b, b, width)
            mask[:, :, start : start + width] = m[lo:hi]
            mask_t[:, :, start : start + width] = m[:, lo:hi].swapaxes(0, 1)
            gram[:, :, start : start + width] = k[lo:hi]
            start += width
        symmetric = (mask * mask_t * gram).reshape(-1, total)
        trace += symmetric.T @ symmetric
        masked = mask * gram  # P's rows lo:hi
        sums += masked.reshape(-1, total).T @ mask.reshape(-1, total)
        columns = (mask_t * gram).swapaxes(1, 2) @ mask_t  # [l, i, j] = Σ_k P_i,kl M_j,kl
        rows = mask.swapaxes(1, 2) @ masked  # [l, i, j] = Σ_m M_i,lm P_j,lm
        row_products += (columns * rows).sum(0)
    trace, sums, row_products = (kernels.to_numpy(x) for x in (trace, sums, row_products))
    upper = np.triu(np.ones((total, total), bool))
    row_products = np.where(upper, row_products, row_products.T)
    return _hsic1(trace / 2, sums * sums.T, row_products, b)


def inner_terms(stats: Sequence[Any], b: int, staging: Any, kernels: Kernels) -> np.ndarray:
    """Plain inner products of every pair of the stacked vectors (all their entries), in float64
    row blocks through `staging`, where the kernels compute."""
    total = sum(s.shape[1] for s in stats)
    products = kernels.zeros(total, total)
    for _, block in _row_blocks(stats, b, staging, entries=stats[0].shape[0]):
        kernels.add_products(products, block, block)
    return kernels.to_numpy(products)


GRAM_MEASURES: dict[str, GramMeasure] = {
    m.name: m
    for m in (
        GramMeasure(
            MINIBATCH_CKA,
            "linear CKA",
            "Nguyen et al. 2021 (minibatch CKA), Kornblith et al. 2019",
            None,
            _batch_hsic,
            relabels=True,
        ),
        GramMeasure(
            "minibatch_rbf_cka",
            "RBF CKA",
            "Kornblith et al. 2019 (RBF kernel, bandwidth a fraction of the median distance)",
            rbf_vectors,
            _batch_hsic,
            relabels=True,
            reads=("rbf_sigma",),
        ),
        GramMeasure(
            "minibatch_dcor",
            "distance correlation²",
            "Székely & Rizzo 2014 (bias-corrected); Sejdinovic et al. 2013 (HSIC equivalence)",
            distance_vectors,
            _batch_hsic,
            relabels=True,
        ),
        GramMeasure(
            "minibatch_rsa_pearson",
            "RSA (Pearson)",
            "Kriegeskorte et al. 2008 (Euclidean distances, Pearson's r)",
            rsa_pearson_vectors,
            inner_terms,
            relabels=False,
        ),
        GramMeasure(
            "minibatch_rsa_spearman",
            "RSA (Spearman)",
            "Kriegeskorte et al. 2008 (Euclidean distances, Spearman's rho)",
            rsa_spearman_vectors,
            inner_terms,
            relabels=False,
        ),
        GramMeasure(
            "minibatch_mutual_knn",
            "mutual k-NN",
            "Huh et al. 2024 (mutual nearest-neighbour alignment)",
            knn_vectors,
            inner_terms,
            relabels=False,
            reads=("knn_k",),
            rows=lambda b: b * b,
        ),
        GramMeasure(
            "minibatch_cknna",
            "CKNNA",
            "Huh et al. 2024 (centred kernel nearest-neighbour alignment)",
            cknna_vectors,
            cknna_terms,
            relabels=False,
            reads=("knn_k",),
            rows=lambda b: 2 * b * b,
            products=2,
        ),
    )
}


def gram_measure(name: str) -> GramMeasure:
    """The registry entry `name`, or an error naming the valid choices."""
    if name not in GRAM_MEASURES:
        raise ValueError(f"unknown minibatch measure {name!r}; choose from {sorted(GRAM_MEASURES)}")
    return GRAM_MEASURES[name]


class MeasureGrams:
    """A `GramSource` whose batches are a measure's vectors of another source's Grams (numpy, on
    the host; float64)."""

    def __init__(self, source: Any, measure: GramMeasure, settings: MeasureSettings):
        self.source, self.measure, self.settings = source, measure, settings
        self.names = list(source.names)
        self.batch_sizes = source.batch_sizes
        self.batch_passes = source.batch_passes

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        packed = self.source.read(batch, out)
        if self.measure.vectors is None:
            return packed
        return self.measure.vectors(packed, self.batch_sizes[batch], self.settings)
