"""Out-of-core all-pairs minibatch linear CKA (Nguyen et al. 2021): per minibatch each model's
packed Grams of all layers are read once, and the HSIC_1 of every layer pair of every model is one
float64 product of the stacked triangles plus their row sums, summed over minibatches and
normalised at the end. From stored Gram statistics (`minibatch_cka_grams`) or from features, whose
Grams are made as extraction makes them (`minibatch_cka_multi`, `minibatch_cka`).

Layers are any `(N, ...)` arrays: numpy, zarr, or anything with `shape` and row indexing. An array
that offers `read_rows(rows, out)` (an activation store's layer) fills the engine's reused buffers
itself; the engine knows nothing of the storage format."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from robrep.similarity.backend import Kernels, kernels_for
from robrep.similarity.batches import Batch, _batch_rows, _check_models, _name, _size, _usable
from robrep.similarity.gram import GramMaker, GramSource, on_device, triangle_size
from robrep.similarity.hsic import _batch_hsic
from robrep.similarity.measures import (
    MeasureGrams,
    MeasureSettings,
    Terms,
    gram_measure,
)

if TYPE_CHECKING:
    import torch

from robrep.similarity.result import MINIBATCH_CKA, CKAResult, _warn_degenerate


def minibatch_cka(
    a: Sequence[Any],
    b: Sequence[Any] | None = None,
    batch_size: int = 256,
    shuffle_seed: int | None = None,
    device: str | torch.device | Kernels = "cpu",
    progress: Callable[[int, int], None] | None = None,
    pass_order: np.ndarray | None = None,
) -> CKAResult:
    """Minibatch linear CKA between layers `a` and `b` (`b=None`: `a` against itself)."""
    models, pair = ([a], (0, 0)) if b is None else ([a, b], (0, 1))
    return minibatch_cka_multi(
        models, [pair], batch_size, shuffle_seed, device, progress, pass_order=pass_order
    )[pair]


def minibatch_cka_multi(
    models: Sequence[Sequence[Any]],
    pairs: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 256,
    shuffle_seed: int | None = None,
    device: str | torch.device | Kernels = "cpu",
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    pass_order: np.ndarray | None = None,
) -> dict[tuple[int, int], CKAResult]:
    """Minibatch CKA for every requested model pair (i, j) from features, reading each row-chunk
    once.

    `models[k]` is a sequence of layer arrays of shape (N, ...). `pairs` defaults to every
    (i, j) with i <= j. Batches are consecutive runs of `batch_size` rows of every pass of
    `pass_order` ((passes, N) positions; default: one pass in stored order, or a seeded
    permutation with `shuffle_seed`). Each batch's Grams are made as extraction makes them and
    pooled as `minibatch_cka_grams` pools stored ones. `timings`, when given, receives seconds
    reading (with the Gram products, in a reader thread), in the products alone and in HSIC.
    """
    n = _check_models(models)
    batches = _batch_rows(n, batch_size, shuffle_seed, pass_order)
    spent: dict[str, float] = {"gram": 0.0}
    kernels = kernels_for(device)  # one backend for the Grams and the HSIC products
    sources = [FeatureGrams(m, batches, kernels, spent) for m in models]
    got = minibatch_cka_grams(sources, pairs, kernels, progress, timings)
    if timings is not None:
        timings["gram"] = timings.get("gram", 0.0) + spent["gram"]
    return got


def minibatch_cka_grams(
    models: Sequence[GramSource],
    pairs: Sequence[tuple[int, int]] | None = None,
    device: str | torch.device | Kernels = "cpu",
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    terms: Terms = _batch_hsic,
) -> dict[tuple[int, int], CKAResult]:
    """Minibatch CKA for every requested model pair from Gram statistics: per batch, each model's
    packed Grams of all layers are read once (a background thread reads the next while this one
    works) and the HSIC_1 of every layer pair of every model is one float64 product
    (`_batch_hsic`). The models must share their minibatches. `terms` replaces HSIC_1 by another
    measure's per-batch terms (`minibatch_measure_grams`)."""
    pairs, used = _plan(len(models), pairs)
    sizes, passes = _shared_batches(models, used)
    keep = _usable([(p, slice(0, b)) for p, b in zip(passes, sizes, strict=True)], sizes)
    widths = {k: len(models[k].names) for k in used}
    largest = triangle_size(max(sizes))
    total = sum(widths.values())
    kernels = kernels_for(device)
    buffers = {k: [kernels.host_buffer(largest * widths[k]) for _ in range(2)] for k in used}
    staging = kernels.staging(total)
    spent = {"read": 0.0, "hsic": 0.0}

    def read(flat: int) -> np.ndarray:
        position, idx = divmod(flat, len(used))  # buffers alternate between kept batches
        start = time.perf_counter()
        got = models[used[idx]].read(keep[position], buffers[used[idx]][position % 2])
        spent["read"] += time.perf_counter() - start
        return got

    items = _prefetch(read, len(keep) * len(used))
    columns = dict(zip(used, itertools.accumulate([0, *widths.values()]), strict=False))
    cross: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    selfs: dict[int, list[np.ndarray]] = {k: [] for k in used}
    for count, t in enumerate(keep):
        stats = [kernels.upload(next(items)) for _ in used]
        start = time.perf_counter()
        hsic = terms(stats, sizes[t], staging, kernels)
        for k in used:
            block = slice(columns[k], columns[k] + widths[k])
            selfs[k].append(np.diagonal(hsic[block, block]).copy())
        for p, q in pairs:
            cross[(p, q)].append(
                hsic[columns[p] : columns[p] + widths[p], columns[q] : columns[q] + widths[q]]
            )
        spent["hsic"] += time.perf_counter() - start
        if progress:
            progress(count + 1, len(keep))
    results = {}
    for p, q in pairs:
        res = CKAResult(
            np.stack(cross[(p, q)]),
            np.stack(selfs[p]),
            np.stack(selfs[q]),
            list(models[p].names),
            list(models[q].names),
            [sizes[t] for t in keep],
            [passes[t] for t in keep],
        )
        _warn_degenerate(res)
        results[(p, q)] = res
    if timings is not None:
        for key, seconds in spent.items():
            timings[key] = timings.get(key, 0.0) + seconds
    return results


def minibatch_measure_grams(
    models: Sequence[GramSource],
    measure: str = MINIBATCH_CKA,
    settings: MeasureSettings | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    device: str | torch.device | Kernels = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[tuple[int, int], CKAResult]:
    """The minibatch measure `measure` (`measures.GRAM_MEASURES`) for every requested model pair
    from Gram statistics: each batch's Grams become the measure's vectors, whose per-batch terms
    pool as minibatch CKA's HSIC_1 terms do (`CKAResult`)."""
    entry = gram_measure(measure)
    settings = settings or MeasureSettings()
    sources = [MeasureGrams(m, entry, settings) for m in models]
    return minibatch_cka_grams(sources, pairs, device, progress, terms=entry.terms)


def _plan(n_models: int, pairs: Sequence[tuple[int, int]] | None):
    """The pairs (default: every i <= j) and the models they use."""
    if pairs is None:
        pairs = [(i, j) for i in range(n_models) for j in range(i, n_models)]
    return list(pairs), sorted({k for pair in pairs for k in pair})


def _shared_batches(models: Sequence[GramSource], used: Sequence[int]) -> tuple[list, list]:
    sizes, passes = list(models[used[0]].batch_sizes), list(models[used[0]].batch_passes)
    for k in used[1:]:
        if list(models[k].batch_sizes) != sizes or list(models[k].batch_passes) != passes:
            raise ValueError(
                f"models {used[0]} and {k} have different minibatches: sizes {sizes} / "
                f"{list(models[k].batch_sizes)}, passes {passes} / {list(models[k].batch_passes)}"
            )
    return sizes, passes


def _prefetch(read: Callable[[int], Any], total: int) -> Iterator[Any]:
    """`read(0) ... read(total - 1)` in order, each read one ahead in a background thread that
    overlaps the caller's work."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0) if total else None
        for flat in range(total):
            item = pending.result()
            pending = pool.submit(read, flat + 1) if flat + 1 < total else None
            yield item


class FeatureGrams:
    """The Gram statistics of layers of features, made batch by batch as they are read, exactly
    as extraction makes them (`GramMaker`). `spent["gram"]` receives the seconds of the products."""

    def __init__(
        self,
        layers: Sequence[Any],
        batches: Sequence[Batch],
        device: str | torch.device | Kernels = "cpu",
        spent: dict[str, float] | None = None,
    ):
        self.layers = list(layers)
        self.names = [_name(layer, f"layer{i}") for i, layer in enumerate(self.layers)]
        self.rows = [rows for _, rows in batches]
        self.batch_sizes = [_size(rows) for rows in self.rows]
        self.batch_passes = [p for p, _ in batches]
        self.device = kernels_for(device).device
        self.spent = spent if spent is not None else {}
        widest = max(math.prod(layer.shape[1:]) for layer in self.layers)
        self.buffer = np.empty(max(self.batch_sizes) * widest, np.float32)
        self.maker = GramMaker()

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        b = self.batch_sizes[batch]
        packed = out[: triangle_size(b) * len(self.layers)].reshape(-1, len(self.layers))
        for i, layer in enumerate(self.layers):
            x = _rows_into(layer, self.rows[batch], self.buffer[: b * _width(layer)].reshape(b, -1))
            start = time.perf_counter()
            packed[:, i] = self.maker(i, on_device(x, self.device))
            self.spent["gram"] = self.spent.get("gram", 0.0) + time.perf_counter() - start
        return packed


def _width(layer: Any) -> int:
    return math.prod(layer.shape[1:])


def _rows_into(array: Any, rows: slice | np.ndarray, out: np.ndarray) -> np.ndarray:
    """Read rows of an (N, ...) array into `out` (a float32 (b, D) view we own) and return it.

    Arrays with `read_rows(rows, out)` fill `out` themselves (an activation store decodes straight
    into it: reusing two buffers for every block keeps memory flat, where fresh multi-MB blocks per
    read fragment the heap and grow RSS with N). Others are indexed and copied.
    """
    read_rows = getattr(array, "read_rows", None)
    if read_rows is not None:
        return read_rows(rows, out)
    if isinstance(rows, slice) or not hasattr(array, "oindex"):
        block = array[rows]
    else:
        block = array.oindex[rows]
    block = np.asarray(block)
    np.copyto(out, block.reshape(block.shape[0], -1), casting="same_kind")
    return out
