"""Views of the minibatch CKA of two stores from their stored triangles (gathers, no new
products): a permutation null, the examples of side b shuffled within each minibatch, and
class-conditional CKA, each class's examples of every minibatch alone."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from robrep.similarity.backend import Kernels, kernels_for
from robrep.similarity.batches import MIN_BATCH, _usable
from robrep.similarity.gram import GramSource, triangle_size
from robrep.similarity.hsic import _cross_products, _side_terms, _SideTerms
from robrep.similarity.measures import MeasureGrams, MeasureSettings, gram_measure
from robrep.similarity.minibatch import _shared_batches

if TYPE_CHECKING:
    import torch


def minibatch_cka_null(
    a: GramSource,
    b: GramSource,
    permutations: int,
    seed: int = 0,
    device: str | torch.device | Kernels = "cpu",
) -> np.ndarray:
    """(permutations, len(a.names), len(b.names)) minibatch CKA of every layer pair with the
    examples of `b` shuffled within each minibatch (its Gram becomes P K Pᵀ, a gather of the stored
    triangle): what the metric shows when the two sides' examples do not correspond. HSIC_1 is
    invariant to relabelling both of its arguments, so the self terms are the unshuffled ones.
    Reproducible from `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, NULL_STREAM]))
    return _view_cka(
        a, b, lambda t, n: [(None, rng.permutation(n)) for _ in range(permutations)], device
    )


def minibatch_cka_by_class(
    a: GramSource,
    b: GramSource | None,
    batch_labels: Sequence[np.ndarray],
    classes: Sequence[int],
    device: str | torch.device | Kernels = "cpu",
) -> np.ndarray:
    """(classes, len(a.names), len(b.names)) class-conditional minibatch CKA: each class's
    examples of every minibatch alone (the Gram restricted to their rows, a gather of the stored
    triangle), pooled over batches as `minibatch_cka_grams` pools whole ones. `batch_labels[t]`
    are the labels of batch t's rows in stored order; a class with fewer than 4 examples in a
    batch skips that batch; `b` None compares `a` with itself."""

    def views(t: int, n: int) -> list[View]:
        labels = np.asarray(batch_labels[t])
        if len(labels) != n:
            raise ValueError(f"batch {t} has {n} rows but {len(labels)} labels")
        return [(rows, rows) for rows in (np.flatnonzero(labels == c) for c in classes)]

    cka = _view_cka(a, b, views, device)
    few = [int(c) for c, m in zip(classes, cka, strict=True) if np.isnan(m).all()]
    if few:
        warnings.warn(
            f"class-conditional CKA: classes {few} never have {MIN_BATCH} examples in one "
            f"minibatch; their values are NaN (raise activations.cka_batch_size)",
            stacklevel=2,
        )
    return cka


def minibatch_measure_null(
    a: GramSource,
    b: GramSource,
    measure: str,
    settings: MeasureSettings | None = None,
    permutations: int = 20,
    seed: int = 0,
    device: str | torch.device | Kernels = "cpu",
) -> np.ndarray:
    """`minibatch_cka_null` for any minibatch measure (`measures.GRAM_MEASURES`): the measure of
    every layer pair with the examples of `b` shuffled within each minibatch, the same
    permutations as minibatch CKA's null for the same `seed`. A measure whose vectors are packed
    matrices of the examples (`relabels`) takes the gathers of `minibatch_cka_null`; the others
    remake side b's vectors from its relabelled Gram for each permutation. Every measure's self
    terms are invariant to relabelling, so they are the unshuffled ones."""
    entry = gram_measure(measure)
    settings = settings or MeasureSettings()
    sides = [MeasureGrams(s, entry, settings) for s in (a, b)]
    if entry.relabels:
        return minibatch_cka_null(*sides, permutations, seed, device)
    rng = np.random.default_rng(np.random.SeedSequence([seed, NULL_STREAM]))
    sizes, passes = _shared_batches([a, b], [0, 1])
    keep = _usable([(p, slice(0, n)) for p, n in zip(passes, sizes, strict=True)], sizes)
    width_a, width_b = len(a.names), len(b.names)
    kernels = kernels_for(device)
    largest = triangle_size(max(sizes))
    buffers = [kernels.host_buffer(largest * len(s.names)) for s in (a, b)]
    staging = kernels.staging(width_a + width_b)
    cross = np.zeros((permutations, width_a, width_b))
    self_a, self_b = np.zeros(width_a), np.zeros(width_b)
    for t in keep:
        n = sizes[t]
        vectors_a = kernels.upload(sides[0].read(t, buffers[0]))
        packed_b = np.asarray(b.read(t, buffers[1]))
        vectors_b = kernels.upload(entry.vectors(packed_b, n, settings))
        terms = entry.terms([vectors_a, vectors_b], n, staging, kernels)
        self_a += np.diagonal(terms[:width_a, :width_a])
        self_b += np.diagonal(terms[width_a:, width_a:])
        for r in range(permutations):
            shuffled = packed_b[packed_permutation(n, rng.permutation(n))]
            vectors_b = kernels.upload(entry.vectors(shuffled, n, settings))
            cross[r] += entry.terms([vectors_a, vectors_b], n, staging, kernels)[:width_a, width_a:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(self_a[None, :, None] * self_b[None, None, :])


@functools.lru_cache(maxsize=16)
def _strict_index(b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column of each packed strict-upper entry, and the (b, b) position in the packed
    order of each off-diagonal entry (either triangle)."""
    rows, cols = np.triu_indices(b, 1)
    index = np.zeros((b, b), np.int64)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows))
    return rows, cols, index


def packed_permutation(b: int, order: np.ndarray) -> np.ndarray:
    """Gather indices that turn a packed b x b Gram K into the packed Gram of the rows `order`
    ((P K Pᵀ)_ij = K_order[i],order[j]): `packed[packed_permutation(b, order)]`. `order` may be a
    permutation of the b rows (the Gram of the same rows relabelled) or any m of them (the m x m
    Gram of that subset)."""
    order = np.asarray(order)
    rows, cols, _ = _strict_index(len(order))
    index = _strict_index(b)[2]
    return np.concatenate([index[order[rows], order[cols]], b * (b - 1) // 2 + order])


NULL_STREAM = 0x4E11  # keeps the null's permutations apart from other uses of the seed
View = tuple[np.ndarray | None, np.ndarray | None]  # rows of a batch taken by side a, side b


def _view_cka(
    a: GramSource,
    b: GramSource | None,
    views: Callable[[int, int], Sequence[View]],
    device: str | torch.device | Kernels = "cpu",
) -> np.ndarray:
    """(views, len(a.names), len(b.names)) minibatch CKA of every layer pair, each view taking
    rows of every batch from each side (`views(t, n)` for batch t of n rows: per view, the rows
    of side a and of side b, None for all of them in stored order; fewer than 4 rows skip that
    batch for that view). HSIC_1 terms come from gathers of the stored triangles: per view the
    a x b cross products, and each side's one-sided terms as `_BatchSide` keeps them; `b` None is
    `a` itself, read once."""
    models = [a] if b is None else [a, b]
    sizes, passes = _shared_batches(models, list(range(len(models))))
    keep = _usable([(p, slice(0, n)) for p, n in zip(passes, sizes, strict=True)], sizes)
    width_a, width_b = len(a.names), len(models[-1].names)
    largest = triangle_size(max(sizes))
    kernels = kernels_for(device)
    buffers = [kernels.host_buffer(largest * len(m.names)) for m in models]
    staging = kernels.staging(width_a + width_b)
    cross = self_a = self_b = None
    for t in keep:
        n = sizes[t]
        sides = [
            _BatchSide(m.read(t, buf), n, staging, kernels)
            for m, buf in zip(models, buffers, strict=True)
        ]
        chosen = views(t, n)
        if cross is None:
            cross = np.zeros((len(chosen), width_a, width_b))
            self_a, self_b = np.zeros((len(chosen), width_a)), np.zeros((len(chosen), width_b))
        for v, (rows_a, rows_b) in enumerate(chosen):
            m = n if rows_a is None else len(rows_a)
            if m < MIN_BATCH:
                continue
            packed_a, terms_a = sides[0].of_rows(rows_a)
            packed_b, terms_b = sides[-1].of_rows(rows_b)
            products = _cross_products(packed_a, packed_b, m, staging, kernels)
            cross[v] += terms_a.cross_hsic(terms_b, products, m)
            self_a[v] += terms_a.self_hsic(m)
            self_b[v] += terms_b.self_hsic(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(self_a[:, :, None] * self_b[:, None, :])


class _BatchSide:
    """One side's packed Grams of a batch of n rows, and their `_SideTerms` for any of its rows:
    computed once for all n rows (in stored order or relabelled: P K̃ Pᵀ 1 = P K̃ 1, and the
    squares do not change), and from the gathered triangle for a subset."""

    def __init__(self, packed: np.ndarray, n: int, staging: Any, kernels: Kernels):
        self.packed = kernels.upload(packed)  # once per batch; every view gathers from it there
        self.n, self.staging, self.kernels = n, staging, kernels

    @functools.cached_property
    def terms(self) -> _SideTerms:
        return _side_terms(self.packed, self.n, self.staging, self.kernels)

    def of_rows(self, rows: np.ndarray | None) -> tuple[np.ndarray, _SideTerms]:
        """The packed Grams of `rows` of the batch (None: all, in stored order) and their terms."""
        if rows is None:
            return self.packed, self.terms
        packed = self.kernels.take_rows(self.packed, packed_permutation(self.n, rows))
        if len(rows) == self.n:
            return packed, self.terms.of_rows(rows)
        return packed, _side_terms(packed, len(rows), self.staging, self.kernels)
