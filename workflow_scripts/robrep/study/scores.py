"""Scalar and per-layer scores of a similarity matrix: the block-structure score (the paper's
"block structure", Nguyen et al. 2021), diagonals, the depth where similarity falls below a
threshold, and their jackknife intervals. numpy."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from robrep.similarity.result import INTERVAL_METHOD, CKAResult

ADV_THRESHOLD = 0.9


def block_structure_score(cka: np.ndarray, min_size: int = 2) -> float:
    """Strongest contiguous block: max over layer segments of (within - across) mean similarity.

    For every contiguous segment of at least `min_size` layers that leaves at least one layer
    outside it, take the mean off-diagonal similarity inside the segment minus the mean
    similarity between the segment and the other layers; the score is the largest such contrast.
    A matrix of uniform similarity scores 0; a block-diagonal one scores near its block contrast.
    NaN when any entry is NaN (a constant layer): a score from a NaN is NaN, never -inf.
    """
    c = np.asarray(cka, dtype=float)
    n = c.shape[0]
    if c.shape != (n, n) or n < min_size + 1:
        raise ValueError(
            f"block score needs a square matrix with > {min_size} layers, got {c.shape}"
        )
    if np.isnan(c).any():
        return float("nan")
    # Sums over any rectangle from 2-D prefix sums, every segment at once.
    total = np.zeros((n + 1, n + 1))
    total[1:, 1:] = c.cumsum(0).cumsum(1)
    trace = np.concatenate([[0.0], np.cumsum(np.diagonal(c))])
    start, stop = np.triu_indices(n + 1, min_size)
    keep = stop - start < n
    start, stop = start[keep], stop[keep]
    k = stop - start
    block = total[stop, stop] - total[start, stop] - total[stop, start] + total[start, start]
    rows = total[stop, n] - total[start, n]
    within = (block - (trace[stop] - trace[start])) / (k * (k - 1))
    across = (rows - block) / (k * (n - k))
    return float(np.max(within - across))


def diagonal(cka: np.ndarray) -> np.ndarray:
    """Per-layer similarity of the same layer in two stores (square matrices only)."""
    c = np.asarray(cka)
    return np.diagonal(c[: min(c.shape), : min(c.shape)])


def depth_matched_diagonal(cka: np.ndarray) -> np.ndarray:
    """For each layer of the first network, its similarity with the layer of the second at the
    nearest relative depth (0 = first probed layer, 1 = last); the diagonal when both have the
    same number of layers."""
    c = np.asarray(cka)
    la, lb = c.shape
    cols = np.rint(np.arange(la) * (lb - 1) / max(la - 1, 1)).astype(int)
    return c[np.arange(la), cols]


def depth_below(diag: np.ndarray, threshold: float = ADV_THRESHOLD) -> float:
    """Relative depth (0 = first probed layer, 1 = last) where `diag` first falls below threshold.

    Returns NaN when it never does.
    """
    d = np.asarray(diag)
    below = np.flatnonzero(d < threshold)
    if len(below) == 0:
        return float("nan")
    return float(below[0] / max(len(d) - 1, 1))


def block_score_interval(part: Any) -> tuple[float, float]:
    """Jackknife interval of the block score of one comparison (an xarray Dataset of
    `compare.compare_stores`, one measure): the block score of each delete-one-minibatch
    replicate, as for CKA's own interval (`CKAResult.interval`); NaN without its HSIC terms or
    without intervals."""
    if "hsic_cross" not in part or part.attrs.get("intervals") != INTERVAL_METHOD:
        return float("nan"), float("nan")
    res = CKAResult(
        part["hsic_cross"].values,
        part["hsic_a"].values,
        part["hsic_b"].values,
        list(part.layer_a.values),
        list(part.layer_b.values),
        passes=[int(p) for p in part["hsic_pass"].values],
    )
    low, high = res.interval(block_structure_score)
    return float(low), float(high)


def class_conditional_summary(by_class: np.ndarray) -> dict[str, float]:
    """Class-conditional cross-layer CKA ((classes, layers, layers)) in two numbers over the
    distinct layer pairs: its mean over classes and pairs, and its spread across classes (the
    standard deviation over classes, averaged over pairs). A specialised network treats classes
    differently from layer to layer: high spread."""
    rows, cols = np.triu_indices(by_class.shape[1], 1)
    pairs = by_class[:, rows, cols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "class_cka_mean": float(np.nanmean(pairs)),
            "class_cka_spread": float(np.nanmean(np.nanstd(pairs, axis=0))),
        }
