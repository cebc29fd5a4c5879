"""Minibatch similarity measures from stored Gram statistics: one registry entry per measure.

Every measure is a function of each batch's b x b Grams K (of X − offset; the offset cancels in
the squared distances d²ᵢⱼ = Kᵢᵢ + Kⱼⱼ − 2Kᵢⱼ and in the batch-centred Gram HKH). A measure maps
each layer's packed Gram to vectors (`GramMeasure.vectors`, numpy on the host) and a batch's
vectors of all layers to a matrix of terms (`GramMeasure.terms`: HSIC_1 of the stacked products,
plain inner products, or CKNNA's pairwise masked HSIC_1), so that on batch t the term of layers
i, j is T_t(i, j). Every measure pools exactly as minibatch CKA (Nguyen et al. 2021) pools HSIC_1:

    measure(i, j) = Σ_t T_t(i, j) / sqrt(Σ_t T_t(i, i) · Σ_t T_t(j, j)),

over every batch of every pass, so the bootstrap over minibatches and the per-pass values of
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
from robrep.similarity.gram import unpack_gram
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
    on a batch of b (the job sizes); `pairwise`: its terms are a loop over layer pairs of
    O(rows) each rather than one stacked product."""

    name: str
    label: str
    citation: str
    vectors: Vectors | None
    terms: Terms
    relabels: bool
    reads: tuple[str, ...] = ()
    rows: Callable[[int], int] = lambda b: b * (b + 1) // 2
    pairwise: bool = False


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
    from scipy.stats import rankdata  # scipy.stats costs a second to import: only when used

    return _centred(rankdata(squared_distances(packed, b), axis=0))


def _square(strict: np.ndarray, b: int, diagonal: float) -> np.ndarray:
    """The b x b symmetric matrix of one layer's strict-upper entries."""
    rows, cols = _strict_pairs(b)
    out = np.full((b, b), diagonal)
    out[rows, cols] = out[cols, rows] = strict
    return out


def _neighbours(d2: np.ndarray, b: int, k: int) -> np.ndarray:
    """(b, b) 0/1 matrix of each example's k nearest other examples of one layer."""
    square = _square(d2, b, np.inf)
    nearest = np.argpartition(square, k - 1, axis=1)[:, :k]
    mask = np.zeros((b, b))
    mask[np.arange(b)[:, None], nearest] = 1.0
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
    d2 = squared_distances(packed, b)
    return np.stack(
        [_neighbours(d2[:, i], b, settings.knn_k).ravel() for i in range(d2.shape[1])], 1
    )


def cknna_vectors(packed: np.ndarray, b: int, settings: MeasureSettings) -> np.ndarray:
    """Per layer, its k-NN indicator and its batch-centred Gram HKH (offset-free), flattened one
    after the other ((2 b², layers)): what `cknna_terms` masks."""
    empty = _too_small(b, settings.knn_k, packed.shape[1], 2 * b * b)
    if empty is not None:
        return empty
    d2 = squared_distances(packed, b)
    out = np.empty((2 * b * b, d2.shape[1]))
    h = np.eye(b) - 1.0 / b
    for i in range(d2.shape[1]):
        gram = unpack_gram(np.asarray(packed[:, i], np.float64), b)
        out[: b * b, i] = _neighbours(d2[:, i], b, settings.knn_k).ravel()
        out[b * b :, i] = (h @ gram @ h).ravel()
    return out


def _masked_hsic(a: Any, c: Any, b: int) -> Any:
    """HSIC_1 (Song et al. 2012, eq. 5) of two b x b matrices with zero diagonals, as Huh et al.'s
    `hsic_unbiased` computes it for their (asymmetric) masked kernels: tr(A C), 1ᵀA1 1ᵀC1 and
    1ᵀA C1 (numpy arrays or torch tensors alike)."""
    return _hsic1((a * c.T).sum() / 2, a.sum() * c.sum(), a.sum(0) @ c.sum(1), b)


def cknna_terms(stats: Sequence[Any], b: int, staging: Any, kernels: Kernels) -> np.ndarray:
    """CKNNA's terms (Huh et al. 2024) of every pair of the concatenated layers: HSIC_1 of the
    centred Grams masked to the neighbours both layers share, α ∘ K and α ∘ L with α = M_K ∘ M_L
    (M_K ∘ M_K = M_K for a layer with itself). A loop over layer pairs, O(b²) each, where the
    kernels compute."""
    n = b * b
    layers = [
        (s[:n, i].reshape(b, b), s[n:, i].reshape(b, b)) for s in stats for i in range(s.shape[1])
    ]
    out = kernels.zeros(len(layers), len(layers))
    for i, (mask_i, gram_i) in enumerate(layers):
        for j in range(i, len(layers)):
            mask_j, gram_j = layers[j]
            mask = mask_i * mask_j
            out[i, j] = out[j, i] = _masked_hsic(mask * gram_i, mask * gram_j, b)
    return kernels.to_numpy(out)


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
            pairwise=True,
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
