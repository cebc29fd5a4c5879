"""Full-data similarity metrics as a registry `{name: function}` over per-layer statistics
computed once per comparison: an N x N Gram of centred features (accumulated over feature blocks so
D never has to fit in memory) and its eigendecomposition. Exact and debiased CKA (Kornblith et al.
2019), RBF-kernel CKA, SVCCA (Raghu et al. 2017), PWCCA (Morcos et al. 2018) and orthogonal
Procrustes (Ding et al. 2021). Their cost is N² memory per layer and O(N³) eigendecompositions,
which limits them to a few thousand examples (N = 5000: 200 MB per Gram). Pure numpy."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robrep.similarity.batches import _check_models, _name
from robrep.similarity.result import DegenerateLayerWarning


def centred_blocks(array: Any, block_bytes: int = 256 * 2**20) -> Iterator[np.ndarray]:
    """Column blocks of an (N, ...) array as float64, each centred by its column means.

    Blocks of about `block_bytes` (all N rows at a time, whole feature chunks where the array is
    chunked along features), so D never has to fit in memory. Every full-data statistic that needs
    the features (the Gram, PWCCA's neuron weights) reads them through this one iterator.
    """
    n = array.shape[0]
    d = math.prod(array.shape[1:])
    width = _feature_block(array, n, block_bytes)
    flat = array if array.ndim == 2 else np.asarray(array[:]).reshape(n, -1)  # in memory already
    for start in range(0, d, width):
        block = np.asarray(flat[:, start : start + width], dtype=np.float64)
        yield block - block.mean(0)


def accumulate_gram(array: Any, block_bytes: int = 256 * 2**20) -> np.ndarray:
    """N x N float64 linear Gram of the centred features of an (N, ...) array."""
    n = array.shape[0]
    gram = np.zeros((n, n))
    for block in centred_blocks(array, block_bytes):
        gram += block @ block.T
    return gram


def _feature_block(array: Any, n: int, block_bytes: int) -> int:
    d = math.prod(array.shape[1:])
    chunks = getattr(array, "chunks", None)
    width = max(1, block_bytes // (8 * n))
    if chunks and len(chunks) == 2 and chunks[1] < d:
        width = max(chunks[1], (width // chunks[1]) * chunks[1])  # whole feature chunks
    return min(d, width)


def center(gram: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11ᵀ/n (the biased estimator's centring)."""
    return gram - gram.mean(0) - gram.mean(1)[:, None] + gram.mean()


def ucenter(gram: np.ndarray) -> np.ndarray:
    """U-centring of an N x N Gram (Székely & Rizzo 2014), a float64 copy with a zero diagonal:
    ⟨ucentred(K), ucentred(L)⟩ / (n (n - 3)) is the unbiased HSIC_1 of Song et al. (2012)."""
    gram = np.array(gram, dtype=np.float64)
    n = gram.shape[0]
    np.fill_diagonal(gram, 0.0)
    means = gram.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0.0)
    return gram


def cka_from_grams(k: np.ndarray, l_: np.ndarray, debiased: bool = False) -> float:
    """Linear (or kernel) CKA of two N x N Grams: biased (Kornblith 2019) or debiased."""
    kc, lc = (ucenter(k), ucenter(l_)) if debiased else (center(k), center(l_))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.vdot(kc, lc) / np.sqrt(np.vdot(kc, kc) * np.vdot(lc, lc)))


def rbf_gram(gram: np.ndarray, sigma_fraction: float) -> np.ndarray:
    """RBF kernel from a linear Gram: bandwidth² = fraction² x median squared distance (Kornblith)."""
    sq_norms = np.diag(gram)
    sq_dist = sq_norms[:, None] + sq_norms[None, :] - 2 * gram
    return np.exp(-sq_dist / (2 * sigma_fraction**2 * np.median(sq_dist)))


@dataclass
class LayerStats:
    """One layer's full-data statistics, computed once per comparison and shared by every metric
    and every pair: the centred-feature Gram and its eigendecomposition."""

    name: str
    gram: np.ndarray  # N x N
    eigvals: np.ndarray  # descending, only those above the rank tolerance
    eigvecs: np.ndarray  # N x rank, orthonormal basis of the centred features' span
    _rbf: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def degenerate(self) -> bool:
        """Constant over the examples: no direction of variance."""
        return len(self.eigvals) == 0

    def rbf(self, sigma_fraction: float) -> np.ndarray:
        """The RBF kernel matrix at this bandwidth fraction (computed once)."""
        if sigma_fraction not in self._rbf:
            self._rbf[sigma_fraction] = rbf_gram(self.gram, sigma_fraction)
        return self._rbf[sigma_fraction]


def layer_stats(array: Any, name: str, rank_rtol: float | None = None) -> LayerStats:
    """Gram and its eigendecomposition; eigenvalues below `rank_rtol` x max are the null space.

    The default `rank_rtol` is N x float64 machine epsilon, numpy's `matrix_rank` convention.
    """
    gram = accumulate_gram(array)
    vals, vecs = np.linalg.eigh(gram)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    tol = (rank_rtol if rank_rtol is not None else gram.shape[0] * np.finfo(float).eps) * max(
        vals[0], 0.0
    )
    keep = vals > tol
    return LayerStats(name, gram, vals[keep], vecs[:, keep])


@dataclass(frozen=True)
class MetricOptions:
    """Settings of the full-data metrics (config `similarity`)."""

    rbf_sigma: float = 0.8  # RBF bandwidth as a fraction of the median distance
    svcca_variance: float = 0.99  # share of variance the SVCCA directions keep


@dataclass
class LayerSet:
    """One side of a comparison: its layer arrays and their statistics, in the same order."""

    arrays: Sequence[Any]
    stats: list[LayerStats]


# A metric maps the two sides to a (len(a), len(b)) matrix.
Metric = Callable[[LayerSet, LayerSet, MetricOptions], np.ndarray]
PairMetric = Callable[[LayerStats, LayerStats, MetricOptions], float]


def pairwise(fn: PairMetric, needs_variance: bool = True) -> Metric:
    """A metric computed pair by pair from the two layers' statistics. With `needs_variance`,
    pairs where either layer is constant are NaN (the metric is undefined there)."""

    def metric(a: LayerSet, b: LayerSet, options: MetricOptions) -> np.ndarray:
        out = np.full((len(a.stats), len(b.stats)), np.nan)
        for i, x in enumerate(a.stats):
            for j, y in enumerate(b.stats):
                if not (needs_variance and (x.degenerate or y.degenerate)):
                    out[i, j] = fn(x, y, options)
        return out

    return metric


def _canonical_correlations(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return np.array([])
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def _svcca_basis(lg: LayerStats, variance: float) -> np.ndarray:
    share = np.cumsum(lg.eigvals) / lg.eigvals.sum()
    k = int(np.searchsorted(share, variance) + 1)
    return lg.eigvecs[:, : min(k, len(lg.eigvals))]


def svcca(x: LayerStats, y: LayerStats, options: MetricOptions) -> float:
    """Mean canonical correlation of the top directions keeping `svcca_variance` of the variance
    (Raghu et al. 2017)."""
    basis = [_svcca_basis(z, options.svcca_variance) for z in (x, y)]
    return float(_canonical_correlations(*basis).mean())


def pwcca(a: LayerSet, b: LayerSet, options: MetricOptions) -> np.ndarray:
    """Projection-weighted CCA (Morcos et al. 2018), weighted by the first side's neurons.

    The weight of canonical variate h_k of layer X is sum over X's neurons of |<h_k, x_neuron>|,
    which needs X's features: one pass over each layer of `a` serves all of its pairs.
    """
    out = np.full((len(a.stats), len(b.stats)), np.nan)
    for i, x in enumerate(a.stats):
        todo = [j for j, y in enumerate(b.stats) if not (x.degenerate or y.degenerate)]
        if not todo:
            continue
        rho, h, weights = {}, {}, {}
        for j in todo:
            u, rho[j], _ = np.linalg.svd(x.eigvecs.T @ b.stats[j].eigvecs, full_matrices=False)
            h[j] = x.eigvecs @ u  # canonical variates of X in sample space, orthonormal columns
            weights[j] = np.zeros(h[j].shape[1])
        for block in centred_blocks(a.arrays[i]):
            for j in todo:
                weights[j] += np.abs(h[j].T @ block).sum(1)
        for j in todo:
            out[i, j] = float(np.sum(weights[j] * rho[j]) / weights[j].sum())
    return out


def procrustes(x: LayerStats, y: LayerStats, options: MetricOptions) -> float:
    """Orthogonal Procrustes distance of unit-Frobenius centred features (Ding et al. 2021), in [0, 2]."""
    mx = x.eigvecs * np.sqrt(x.eigvals)
    my = y.eigvecs * np.sqrt(y.eigvals)
    nuclear = np.linalg.svd(mx.T @ my, compute_uv=False).sum()
    return float(2.0 - 2.0 * nuclear / math.sqrt(np.trace(x.gram) * np.trace(y.gram)))


FULL_METRICS: dict[str, Metric] = {
    # Kornblith et al. 2019, biased; Nguyen et al. 2021 / Song et al. 2012, debiased.
    "linear_cka": pairwise(lambda x, y, o: cka_from_grams(x.gram, y.gram), needs_variance=False),
    "linear_cka_debiased": pairwise(
        lambda x, y, o: cka_from_grams(x.gram, y.gram, debiased=True), needs_variance=False
    ),
    "rbf_cka": pairwise(
        lambda x, y, o: cka_from_grams(x.rbf(o.rbf_sigma), y.rbf(o.rbf_sigma)),
        needs_variance=False,
    ),
    # Mean canonical correlation and mean squared canonical correlation (Hotelling 1936).
    "cca": pairwise(lambda x, y, o: _canonical_correlations(x.eigvecs, y.eigvecs).mean()),
    "cca_squared": pairwise(
        lambda x, y, o: (_canonical_correlations(x.eigvecs, y.eigvecs) ** 2).mean()
    ),
    "svcca": pairwise(svcca),
    "pwcca": pwcca,
    "procrustes": pairwise(procrustes),
}

# Metrics built on canonical correlations, which are all 1 when either side's centred features span
# the whole (N - 1)-dimensional centred space (D >= N - 1): then they are 1 whatever the networks.
SPAN_FIXED = frozenset({"cca", "cca_squared", "pwcca"})


def full_data_similarity(
    a: Sequence[Any],
    b: Sequence[Any] | None,
    metrics: Sequence[str],
    rbf_sigma: float = 0.8,
    svcca_variance: float = 0.99,
) -> dict[str, np.ndarray]:
    """Every requested full-data metric for every layer pair, as (len(a), len(b)) arrays.

    Memory: one N x N Gram plus its eigenvectors per layer of `a` and `b` (float64).
    """
    unknown = [m for m in metrics if m not in FULL_METRICS]
    if unknown:
        raise ValueError(f"unknown full-data metric(s) {unknown}; valid: {', '.join(FULL_METRICS)}")
    _check_models([a] if b is None else [a, b])
    side_a = LayerSet(a, [layer_stats(arr, _name(arr, f"layer{i}")) for i, arr in enumerate(a)])
    side_b = side_a
    if b is not None:
        side_b = LayerSet(b, [layer_stats(arr, _name(arr, f"layer{i}")) for i, arr in enumerate(b)])
    for lg in side_a.stats + ([] if b is None else side_b.stats):
        if lg.degenerate:
            warnings.warn(
                f"layer {lg.name!r} is constant over the examples; its similarities are NaN",
                DegenerateLayerWarning,
                stacklevel=2,
            )
    options = MetricOptions(rbf_sigma, svcca_variance)
    return {m: FULL_METRICS[m](side_a, side_b, options) for m in metrics}
