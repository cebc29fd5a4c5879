"""Representation similarity: out-of-core all-pairs minibatch CKA and full-data RS metrics.

Minibatch linear CKA (Nguyen et al. 2021): per minibatch of b rows, each layer's Gram K = X Xᵀ is
computed once (float32, symmetric product, after subtracting a fixed per-feature offset taken from
the first batch) and packed (strict upper triangle, then the diagonal) — at extraction, where the
store keeps it, or from features as they are read. The unbiased HSIC_1 (Song et al. 2012) of
*every* layer pair of *every* model is then one float64 product of the stacked packed Grams plus
their row sums, summed over minibatches and normalised at the end.

Full-data metrics are a registry `{name: function}` over per-layer statistics computed once per
comparison (an N x N Gram of centred features, accumulated over feature blocks so D never has to
fit in memory, and its eigendecomposition); their cost is N² memory per layer and O(N³)
eigendecompositions, which limits them to a few thousand examples (N = 5000: 200 MB per Gram).

Layers are any `(N, ...)` arrays: numpy, zarr, or anything with `shape` and row indexing. An array
that offers `read_rows(rows, out)` (an activation store's layer) fills the engine's reused buffers
itself; the engine knows nothing of the storage format.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

MIN_BATCH = 4  # HSIC_1 divides by n (n - 3)


class DegenerateLayerWarning(UserWarning):
    """A layer has zero self-similarity (e.g. constant); its CKA rows are NaN."""


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


def _size(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _name(array: Any, default: str) -> str:
    return str(getattr(array, "name", None) or default)


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


Batch = tuple[int, slice | np.ndarray]  # (pass, rows)


def pass_batches(pass_order: np.ndarray, batch_size: int) -> list[Batch]:
    """The minibatches of every pass: consecutive runs of `batch_size` positions of each pass's
    order (the last one shorter). Rows are sorted within a batch (HSIC_1 does not depend on their
    order); an identity order gives plain slices. Extraction and comparison share this partition.
    """
    if batch_size < MIN_BATCH:
        raise ValueError(f"batch_size {batch_size} must be >= {MIN_BATCH}")
    out: list[Batch] = []
    for p, order in enumerate(np.asarray(pass_order)):
        n = len(order)
        identity = np.array_equal(order, np.arange(n))
        for s in range(0, n, batch_size):
            rows = (
                slice(s, min(s + batch_size, n)) if identity else np.sort(order[s : s + batch_size])
            )
            out.append((p, rows))
    return out


def _usable(batches: list[Batch], sizes: Sequence[int]) -> list[int]:
    """Indices of the batches HSIC_1 can use (>= 4 rows); warns about the ones dropped."""
    keep = [t for t, size in enumerate(sizes) if size >= MIN_BATCH]
    for t in sorted(set(range(len(batches))) - set(keep)):
        warnings.warn(
            f"minibatch CKA: dropping the final batch of {sizes[t]} rows (< {MIN_BATCH}) of pass "
            f"{batches[t][0]}; {sum(sizes[k] for k in keep)} of {sum(sizes)} rows used",
            stacklevel=4,
        )
    return keep


def _batch_rows(
    n: int, batch_size: int, shuffle_seed: int | None, pass_order: np.ndarray | None
) -> list[Batch]:
    """The usable batches of `pass_order` ((passes, n) positions), or of one pass in stored order
    (or a seeded permutation when `shuffle_seed` is given)."""
    if pass_order is None:
        order = (
            np.arange(n)
            if shuffle_seed is None
            else np.random.default_rng(shuffle_seed).permutation(n)
        )
        pass_order = order[None]
    elif np.shape(pass_order)[1] != n:
        raise ValueError(f"pass_order covers {np.shape(pass_order)[1]} examples, the layers {n}")
    batches = pass_batches(pass_order, batch_size)
    return [batches[t] for t in _usable(batches, [_size(rows) for _, rows in batches])]


def _check_models(models: Sequence[Sequence[Any]]) -> int:
    sizes = {
        (k, _name(layer, f"layer{i}")): layer.shape[0]
        for k, m in enumerate(models)
        for i, layer in enumerate(m)
    }
    if not sizes:
        raise ValueError("no layers given")
    ns = set(sizes.values())
    if len(ns) != 1:
        detail = ", ".join(f"model {k} {name}: {n}" for (k, name), n in sizes.items())
        raise ValueError(f"layers have different numbers of examples (N): {detail}")
    n = ns.pop()
    if n < MIN_BATCH:
        raise ValueError(f"CKA needs at least {MIN_BATCH} examples, got N = {n}")
    return n


def _prefetch(read: Callable[[int], Any], total: int) -> Iterator[Any]:
    """`read(0) ... read(total - 1)` in order, each read one ahead in a background thread that
    overlaps the caller's work."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0) if total else None
        for flat in range(total):
            item = pending.result()
            pending = pool.submit(read, flat + 1) if flat + 1 < total else None
            yield item


# ----------------------------------------------------------------------------------------------
# Gram statistics: each layer's minibatch Gram, packed. Extraction stores them; the feature path
# makes them from features as it reads; both feed the same HSIC_1 accumulation.


def triangle_size(b: int) -> int:
    """Values of one packed b x b Gram: its upper triangle, diagonal included."""
    return b * (b + 1) // 2


@functools.lru_cache(maxsize=16)
def _pack_positions(b: int) -> np.ndarray:
    """Flat positions, in a row-major b x b matrix whose upper triangle holds K, of the packed
    order: the strict upper triangle row by row, then the diagonal."""
    rows, cols = np.triu_indices(b, 1)
    return np.concatenate([rows * b + cols, np.arange(b) * (b + 1)])


@functools.lru_cache(maxsize=16)
def _strict_entries(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each packed strict-upper entry of a b x b Gram."""
    rows, cols = np.triu_indices(b, 1)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def upper_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """A row-major b x b matrix whose upper triangle (diagonal included) is X Xᵀ of float32 rows
    `x` (b, D), the rest zero: half a full product's FLOPs.

    On the CPU, BLAS's symmetric rank-k update (ssyrk; its column-major lower triangle is the
    row-major upper one, no copy); on other devices (torch has no syrk) each row block times the
    column blocks at or right of it, (blocks + 1) / (2 blocks) of the FLOPs.
    """
    if x.device.type == "cpu":
        from scipy.linalg.blas import ssyrk

        rows = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(ssyrk(1.0, rows.T, trans=1, lower=1).T)
    return row_block_gram(x, blocks)


def row_block_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """`upper_gram` on any device: each row block times the column blocks at or right of it."""
    b = x.shape[0]
    out = torch.zeros(b, b, dtype=x.dtype, device=x.device)
    edges = [round(b * i / blocks) for i in range(blocks + 1)]
    for lo, hi in itertools.pairwise(edges):
        out[lo:hi, lo:] = x[lo:hi] @ x[lo:].T
    return out.triu_()


def pack_gram(upper: torch.Tensor | np.ndarray) -> np.ndarray:
    """The packed float32 Gram statistic of a b x b matrix whose upper triangle holds K: the strict
    upper triangle row by row, then the diagonal (one gather)."""
    b = upper.shape[0]
    if isinstance(upper, torch.Tensor):
        positions = torch.from_numpy(_pack_positions(b)).to(upper.device)
        return upper.reshape(-1)[positions].cpu().numpy()
    return np.take(upper.reshape(-1), _pack_positions(b))


def unpack_gram(packed: np.ndarray, b: int) -> np.ndarray:
    """The symmetric b x b Gram of a packed statistic (for tests and inspection)."""
    rows, cols = np.triu_indices(b, 1)
    gram = np.zeros((b, b), packed.dtype)
    gram[rows, cols] = gram[cols, rows] = packed[: len(rows)]
    gram[np.arange(b), np.arange(b)] = packed[len(rows) : triangle_size(b)]
    return gram


def offset_upper_gram(
    x: np.ndarray,
    offset: np.ndarray,
    scratch: np.ndarray,
    helpers: ThreadPoolExecutor | None = None,
) -> np.ndarray:
    """`upper_gram` of (x − offset) on the CPU, without a pass over all of x: column blocks of
    x − offset go through `scratch` (small enough to stay in cache) and ssyrk accumulates
    their products. `helpers` (threads) share each block's subtraction with this thread, which
    BLAS's own threads would otherwise wait for. Returns the row-major b x b matrix whose upper
    triangle holds the Gram."""
    from scipy.linalg.blas import ssyrk

    b, d = x.shape
    step = max(1, min(d, scratch.size // b))
    shares = 1 + (helpers._max_workers if helpers is not None else 0)
    edges = [round(b * i / shares) for i in range(shares + 1)]
    gram = None
    for lo in range(0, d, step):
        hi = min(lo + step, d)
        part = scratch[: b * (hi - lo)].reshape(b, -1)

        def subtract(r0: int, r1: int, lo: int = lo, hi: int = hi, part: np.ndarray = part) -> None:
            np.subtract(x[r0:r1, lo:hi], offset[lo:hi], out=part[r0:r1])

        others = [helpers.submit(subtract, *edges[i : i + 2]) for i in range(1, shares)]
        subtract(edges[0], edges[1])
        for other in others:
            other.result()
        if gram is None:
            gram = ssyrk(1.0, part.T, trans=1, lower=1)
        else:
            gram = ssyrk(1.0, part.T, trans=1, lower=1, beta=1.0, c=gram, overwrite_c=1)
    return gram.T


class GramMaker:
    """Packed Gram statistics of one model's layers, batch by batch: the symmetric product of
    X − offset, packed. Each layer's offset is its first batch's mean, fixed for every later batch
    and pass (HSIC_1 does not depend on it; it keeps the float32 products of layers with large
    means accurate).

    On the CPU every step is numpy/BLAS (`offset_upper_gram`, a reused 4 MB scratch): a torch op
    right before OpenBLAS's ssyrk leaves torch's OpenMP workers spinning on the cores the ssyrk
    needs, and a separate offset pass over X costs a fifth of the product (benchmarks/bench_gram).
    """

    SCRATCH_VALUES = 2**20  # 4 MB of float32

    def __init__(self, threads: int | None = None) -> None:
        self.offsets: dict[Any, Any] = {}
        self.scratch = np.empty(self.SCRATCH_VALUES, np.float32)
        self.buffer: torch.Tensor | None = None
        threads = threads or torch.get_num_threads()
        self.helpers = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def __call__(self, key: Any, output: torch.Tensor) -> np.ndarray:
        flat = output.detach().reshape(len(output), -1)
        if flat.device.type != "cpu":
            return self._on_device(key, flat.float())
        x = flat.numpy() if flat.dtype == torch.float32 else flat.float().numpy()
        if key not in self.offsets:
            self.offsets[key] = x.mean(0)  # float32: an offset need not be exact
        return pack_gram(offset_upper_gram(x, self.offsets[key], self.scratch, self.helpers))

    def _on_device(self, key: Any, x: torch.Tensor) -> np.ndarray:
        """X − offset into one growing buffer (a fresh multi-MB array per layer costs about as much
        as the product), row-block product, packing on the device."""
        if key not in self.offsets:
            self.offsets[key] = x.mean(0, keepdim=True)
        if self.buffer is None or self.buffer.numel() < x.numel():
            self.buffer = torch.empty(x.numel(), device=x.device)
        centred = torch.sub(x, self.offsets[key], out=self.buffer[: x.numel()].view(x.shape))
        return pack_gram(row_block_gram(centred))


class GramSource(Protocol):
    """One model's Gram statistics, batch by batch (a store's `grams()`, or `FeatureGrams`)."""

    names: list[str]  # the layers, in the order of the packed columns
    batch_sizes: Sequence[int]  # rows of each batch
    batch_passes: Sequence[int]  # the pass each batch belongs to

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        """Batch `batch`'s packed Grams as a (triangle_size(b), layers) float32 view of `out`."""
        ...


class FeatureGrams:
    """The Gram statistics of layers of features, made batch by batch as they are read, exactly
    as extraction makes them (`GramMaker`). `spent["gram"]` receives the seconds of the products."""

    def __init__(
        self,
        layers: Sequence[Any],
        batches: Sequence[Batch],
        device: str | torch.device = "cpu",
        spent: dict[str, float] | None = None,
    ):
        self.layers = list(layers)
        self.names = [_name(layer, f"layer{i}") for i, layer in enumerate(self.layers)]
        self.rows = [rows for _, rows in batches]
        self.batch_sizes = [_size(rows) for rows in self.rows]
        self.batch_passes = [p for p, _ in batches]
        self.device = torch.device(device)
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
            packed[:, i] = self.maker(i, torch.from_numpy(x).to(self.device))
            self.spent["gram"] = self.spent.get("gram", 0.0) + time.perf_counter() - start
        return packed


def _width(layer: Any) -> int:
    return math.prod(layer.shape[1:])


def minibatch_cka_multi(
    models: Sequence[Sequence[Any]],
    pairs: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 256,
    shuffle_seed: int | None = None,
    device: str | torch.device = "cpu",
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
    sources = [FeatureGrams(m, batches, device, spent) for m in models]
    got = minibatch_cka_grams(sources, pairs, device, progress, timings)
    if timings is not None:
        timings["gram"] = timings.get("gram", 0.0) + spent["gram"]
    return got


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


def minibatch_cka_grams(
    models: Sequence[GramSource],
    pairs: Sequence[tuple[int, int]] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[tuple[int, int], CKAResult]:
    """Minibatch CKA for every requested model pair from Gram statistics: per batch, each model's
    packed Grams of all layers are read once (a background thread reads the next while this one
    works) and the HSIC_1 of every layer pair of every model is one float64 product
    (`_batch_hsic`). The models must share their minibatches."""
    pairs, used = _plan(len(models), pairs)
    sizes, passes = _shared_batches(models, used)
    keep = _usable([(p, slice(0, b)) for p, b in zip(passes, sizes, strict=True)], sizes)
    widths = {k: len(models[k].names) for k in used}
    largest = triangle_size(max(sizes))
    buffers = {k: [np.empty(largest * widths[k], np.float32) for _ in range(2)] for k in used}
    total = sum(widths.values())
    staging = _staging(total)
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
        stats = [next(items) for _ in used]
        start = time.perf_counter()
        hsic = _batch_hsic(stats, sizes[t], staging, torch.device(device))
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
    device: str | torch.device = "cpu",
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
    buffers = [np.empty(largest * len(m.names), np.float32) for m in models]
    staging = _staging(width_a + width_b)
    cross = self_a = self_b = None
    dev = torch.device(device)
    for t in keep:
        n = sizes[t]
        sides = [
            _BatchSide(m.read(t, buf), n, staging, dev)
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
            products = _cross_products(packed_a, packed_b, m, staging, dev)
            cross[v] += terms_a.cross_hsic(terms_b, products, m)
            self_a[v] += terms_a.self_hsic(m)
            self_b[v] += terms_b.self_hsic(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(self_a[:, :, None] * self_b[:, None, :])


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


class _BatchSide:
    """One side's packed Grams of a batch of n rows, and their `_SideTerms` for any of its rows:
    computed once for all n rows (in stored order or relabelled: P K̃ Pᵀ 1 = P K̃ 1, and the
    squares do not change), and from the gathered triangle for a subset."""

    def __init__(self, packed: np.ndarray, n: int, staging: torch.Tensor, device: torch.device):
        self.packed, self.n, self.staging, self.device = packed, n, staging, device

    @functools.cached_property
    def terms(self) -> _SideTerms:
        return _side_terms(self.packed, self.n, self.staging, self.device)

    def of_rows(self, rows: np.ndarray | None) -> tuple[np.ndarray, _SideTerms]:
        """The packed Grams of `rows` of the batch (None: all, in stored order) and their terms."""
        if rows is None:
            return self.packed, self.terms
        packed = self.packed[packed_permutation(self.n, rows)]
        if len(rows) == self.n:
            order = torch.from_numpy(np.asarray(rows)).to(self.device)
            return packed, _SideTerms(self.terms.row_sums[order], self.terms.squares)
        return packed, _side_terms(packed, len(rows), self.staging, self.device)


def minibatch_cka_null(
    a: GramSource,
    b: GramSource,
    permutations: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
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
    device: str | torch.device = "cpu",
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


def minibatch_cka(
    a: Sequence[Any],
    b: Sequence[Any] | None = None,
    batch_size: int = 256,
    shuffle_seed: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    pass_order: np.ndarray | None = None,
) -> CKAResult:
    """Minibatch linear CKA between layers `a` and `b` (`b=None`: `a` against itself)."""
    models, pair = ([a], (0, 0)) if b is None else ([a, b], (0, 1))
    return minibatch_cka_multi(
        models, [pair], batch_size, shuffle_seed, device, progress, pass_order=pass_order
    )[pair]


# ----------------------------------------------------------------------------------------------
# Full-data metrics from N x N Grams.


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
    """U-centring of an N x N Gram (zero diagonal), for unbiased HSIC; a float64 copy."""
    return _ucenter_(torch.tensor(gram, dtype=torch.float64)).numpy()


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
