"""The result of a minibatch CKA comparison: per-batch HSIC_1 terms, normalised at the end, with
the pass spread and the bootstrap over minibatches. Pure numpy: summaries and figures read it
without torch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

MINIBATCH_CKA = "minibatch_cka"  # the metric name of minibatch CKA, on which every summary is built


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

    def bootstrap_draws(self, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
        """(n_resamples, len(a), len(b)) CKA of minibatches resampled with replacement (over
        every batch of every pass): the draws behind `bootstrap` and any statistic of the matrix."""
        if self.n_batches < 2:
            raise ValueError("bootstrap needs at least 2 minibatches")
        rng = np.random.default_rng(seed)
        draws = np.empty((n_resamples, *self.cross.shape[1:]))
        for r in range(n_resamples):
            idx = rng.integers(0, self.n_batches, self.n_batches)
            draws[r] = _normalise(
                self.cross[idx].sum(0), self.self_a[idx].sum(0), self.self_b[idx].sum(0)
            )
        return draws

    def bootstrap(
        self, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Percentile confidence interval of CKA from resampling minibatches with replacement."""
        return percentile_interval(self.bootstrap_draws(n_resamples, seed), level)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The central `level` percentile interval of bootstrap `draws` along their first axis
    (Efron & Tibshirani 1993, ch. 13), NaN draws left out."""
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    return low, high


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
