"""The result of a minibatch CKA comparison: per-batch HSIC_1 terms, normalised at the end, with
the pass spread and the jackknife interval over minibatches. numpy (and scipy's t quantile):
summaries and figures read it without torch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MINIBATCH_CKA = "minibatch_cka"  # the metric name of minibatch CKA, on which every summary is built
INTERVAL_LEVEL = 0.95  # the confidence level of every interval robrep reports
INTERVAL_METHOD = "jackknife"  # how (`CKAResult.interval`), recorded in each comparison's attrs


class DegenerateLayerWarning(UserWarning):
    """A layer has zero self-similarity (e.g. constant); its CKA rows are NaN."""


@dataclass
class CKAResult:
    """Per-minibatch HSIC_1 terms of layers `names_a` x `names_b`; `cka` normalises their sums.

    `cross[t, i, j]` = HSIC_1(K_i, L_j) on batch t, `self_a[t, i]` = HSIC_1(K_i, K_i),
    `self_b[t, j]` = HSIC_1(L_j, L_j); `passes[t]` is the pass batch t belongs to. Results of
    passes over other rows merge by concatenation.
    """

    cross: np.ndarray
    self_a: np.ndarray
    self_b: np.ndarray
    names_a: list[str]
    names_b: list[str]
    batch_sizes: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)

    @property
    def n_batches(self) -> int:
        return self.cross.shape[0]

    @property
    def cka(self) -> np.ndarray:
        """(len(a), len(b)) float64 minibatch CKA; NaN where a layer's self-HSIC is zero."""
        return _normalise(self.cross.sum(0), self.self_a.sum(0), self.self_b.sum(0))

    def merge(self, other: CKAResult) -> CKAResult:
        """Pool the minibatches of two passes over the same layers."""
        if other.names_a != self.names_a or other.names_b != self.names_b:
            raise ValueError("cannot merge CKA results over different layers")
        return CKAResult(
            np.concatenate([self.cross, other.cross]),
            np.concatenate([self.self_a, other.self_a]),
            np.concatenate([self.self_b, other.self_b]),
            self.names_a,
            self.names_b,
            self.batch_sizes + other.batch_sizes,
            self.passes + other.passes,
        )

    def per_pass(self) -> np.ndarray:
        """(passes, len(a), len(b)) CKA of each pass's minibatches alone: the pass-to-pass spread."""
        passes = np.asarray(self.passes or [0] * self.n_batches)
        return np.stack(
            [
                _normalise(
                    self.cross[passes == p].sum(0),
                    self.self_a[passes == p].sum(0),
                    self.self_b[passes == p].sum(0),
                )
                for p in np.unique(passes)
            ]
        )

    def interval(
        self,
        statistic: Callable[[np.ndarray], Any] | None = None,
        level: float = INTERVAL_LEVEL,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Student-t `level` interval of `statistic` of the CKA matrix (default: the matrix itself)
        from the delete-one-minibatch jackknife (Quenouille 1956; Tukey 1958; Efron & Tibshirani
        1993, ch. 11).

        A pass's minibatches are disjoint sets of examples, so independent draws; the passes
        reshuffle the same examples, so they are not, and resampling all of them as if they were
        (the bootstrap robrep used before) covered the truth 67% of the time at 3 batches x 2
        passes (docs/similarity.md). The jackknife variance is taken within each pass and averaged
        over the passes: the variance of a one-pass estimate, at least that of the pooled one, so
        the interval errs wide; m - 1 degrees of freedom for the fewest batches m of a pass.
        """
        stat = statistic or (lambda matrix: matrix)
        passes = np.asarray(self.passes or [0] * self.n_batches)
        variances, fewest = [], self.n_batches
        for p in np.unique(passes):
            rows = np.flatnonzero(passes == p)
            if len(rows) < 2:
                raise ValueError(
                    f"the jackknife needs at least 2 minibatches in every pass; pass {p} has "
                    f"{len(rows)}"
                )
            cross, self_a, self_b = (t[rows].sum(0) for t in (self.cross, self.self_a, self.self_b))
            replicates = np.stack(
                [
                    np.asarray(
                        stat(
                            _normalise(
                                cross - self.cross[r],
                                self_a - self.self_a[r],
                                self_b - self.self_b[r],
                            )
                        ),
                        dtype=float,
                    )
                    for r in rows
                ]
            )
            m = len(rows)
            spread = (replicates - replicates.mean(0)) ** 2
            variances.append((m - 1) / m * spread.sum(0))
            fewest = min(fewest, m)
        # Student's t quantile: scipy.stats.t.ppf is this function, whose module imports in a
        # tenth of scipy.stats's second (paid by every comparison job).
        from scipy.special import stdtrit

        half = stdtrit(fewest - 1, (1 + level) / 2) * np.sqrt(np.mean(variances, axis=0))
        centre = np.asarray(stat(self.cka), dtype=float)
        return centre - half, centre + half


def _normalise(cross: np.ndarray, self_a: np.ndarray, self_b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(np.outer(self_a, self_b))


def _warn_degenerate(res: CKAResult) -> None:
    for names, selfs in ((res.names_a, res.self_a), (res.names_b, res.self_b)):
        for name, value in zip(names, selfs.sum(0), strict=True):
            if not value > 0:
                warnings.warn(
                    f"layer {name!r} has zero self-HSIC (constant or degenerate activations); "
                    f"its CKA values are NaN",
                    DegenerateLayerWarning,
                    stacklevel=3,
                )
