"""Representation similarity: out-of-core all-pairs minibatch CKA and full-data RS metrics.

Minibatch linear CKA (Nguyen et al. 2021): per minibatch of b rows, each layer's Gram K = X Xᵀ is
computed once (float32, after subtracting a fixed per-feature offset taken from the first batch),
U-centred in float64 and flattened; the unbiased HSIC_1 (Song et al. 2012) of *every* layer pair of
*every* model is then one matrix product of the stacked vectors, summed over minibatches and
normalised at the end. Each row-chunk of each layer is read exactly once.

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


def ucentered_gram(x: torch.Tensor) -> torch.Tensor:
    """U-centred linear Gram of rows `x` (b, D) as a float64 matrix (Székely & Rizzo 2014).

    ⟨ucentred(K), ucentred(L)⟩ / (n (n - 3)) is the unbiased HSIC_1 estimator of Song et al. (2012).
    The Gram product is float32; centring and everything after it is float64.
    """
    return _ucenter_((x @ x.T).double())


def _ucenter_(gram: torch.Tensor) -> torch.Tensor:
    """U-centre a float64 Gram in place (zero diagonal) and return it."""
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

    def bootstrap(
        self, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Percentile confidence interval of CKA from resampling minibatches with replacement."""
        if self.n_batches < 2:
            raise ValueError("bootstrap needs at least 2 minibatches")
        rng = np.random.default_rng(seed)
        draws = np.empty((n_resamples, *self.cross.shape[1:]))
        for r in range(n_resamples):
            idx = rng.integers(0, self.n_batches, self.n_batches)
            draws[r] = _normalise(
                self.cross[idx].sum(0), self.self_a[idx].sum(0), self.self_b[idx].sum(0)
            )
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


def _read_blocks(
    models: Sequence[Sequence[Any]],
    jobs: Sequence[tuple[int, int]],
    batches: Sequence[Batch],
    timings: dict[str, float],
) -> Iterator[torch.Tensor]:
    """Every (batch, layer) block of features in order, minus its layer's fixed offset (the first
    batch's mean), read one block ahead.

    Blocks alternate between two reused buffers: when block j + 2 is read, block j is done with.
    """
    widths = {(k, i): math.prod(models[k][i].shape[1:]) for k, i in jobs}
    largest = max(_size(rows) for _, rows in batches) * max(widths.values(), default=0)
    buffers = [np.empty(largest, np.float32), np.empty(largest, np.float32)]
    offsets: dict[tuple[int, int], torch.Tensor] = {}

    def read(flat: int) -> torch.Tensor:
        t, idx = divmod(flat, len(jobs))
        k, i = jobs[idx]
        start = time.perf_counter()
        rows = batches[t][1]
        n_rows = _size(rows)
        out = buffers[flat % 2][: n_rows * widths[(k, i)]].reshape(n_rows, -1)
        x = torch.from_numpy(_rows_into(models[k][i], rows, out))
        if (k, i) not in offsets:
            offsets[(k, i)] = x.mean(0, keepdim=True)
        x.sub_(offsets[(k, i)])
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - start
        return x

    return _prefetch(read, len(batches) * len(jobs))


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
    permutation with `shuffle_seed`). `timings`, when given, receives seconds spent reading (in a
    reader thread that overlaps the Gram work and also subtracts the offsets) and in the Gram phase.
    """
    n = _check_models(models)
    batches = _batch_rows(n, batch_size, shuffle_seed, pass_order)
    pairs, used, jobs = _plan(models, pairs)
    spent: dict[str, float] = {"read": 0.0, "gram": 0.0}
    blocks = _read_blocks(models, jobs, batches, spent)
    return _minibatch_hsic(
        models,
        pairs,
        [_size(rows) for _, rows in batches],
        [p for p, _ in batches],
        blocks,
        lambda x, b: ucentered_gram(x.to(device)).reshape(-1),
        progress,
        spent,
        timings,
    )


def _plan(
    models: Sequence[Sequence[Any]], pairs: Sequence[tuple[int, int]] | None
) -> tuple[list[tuple[int, int]], list[int], list[tuple[int, int]]]:
    """The pairs (default: every i <= j), the models they use and the (model, layer) jobs."""
    if pairs is None:
        pairs = [(i, j) for i in range(len(models)) for j in range(i, len(models))]
    used = sorted({k for pair in pairs for k in pair})
    return list(pairs), used, [(k, i) for k in used for i in range(len(models[k]))]


def _minibatch_hsic(
    models: Sequence[Sequence[Any]],
    pairs: Sequence[tuple[int, int]],
    sizes: Sequence[int],
    passes: Sequence[int],
    blocks: Iterator[Any],
    to_vector: Callable[[Any, int], torch.Tensor],
    progress: Callable[[int, int], None] | None,
    spent: dict[str, float],
    timings: dict[str, float] | None,
) -> dict[tuple[int, int], CKAResult]:
    """Per-batch HSIC_1 of every requested pair: `blocks` yields one item per (batch, layer) in
    order, `to_vector` turns it into the layer's U-centred Gram as a vector whose inner products
    are the Frobenius products of the U-centred Grams. Seconds in `spent` (reading, filled by the
    reader; the Gram phase) are added to `timings` when given."""
    _, used, jobs = _plan(models, pairs)
    names = {k: [_name(layer, f"layer{i}") for i, layer in enumerate(models[k])] for k in used}
    cross: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    selfs: dict[int, list[np.ndarray]] = {k: [] for k in used}
    for t, b in enumerate(sizes):
        vectors: dict[int, list[torch.Tensor]] = {k: [] for k in used}
        for k, _layer in jobs:
            block = next(blocks)
            start = time.perf_counter()
            vectors[k].append(to_vector(block, b))
            spent["gram"] += time.perf_counter() - start
            del block
        _add_batch_hsic(vectors, pairs, b, cross, selfs)
        if progress:
            progress(t + 1, len(sizes))
    results = {}
    for p in pairs:
        res = CKAResult(
            np.stack(cross[p]),
            np.stack(selfs[p[0]]),
            np.stack(selfs[p[1]]),
            names[p[0]],
            names[p[1]],
            list(sizes),
            list(passes),
        )
        _warn_degenerate(res)
        results[p] = res
    if timings is not None:
        for key, seconds in spent.items():
            timings[key] = timings.get(key, 0.0) + seconds
    return results


# ----------------------------------------------------------------------------------------------
# Gram statistics: each layer's minibatch Grams, made once at extraction.


def lower_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """The lower triangle (diagonal included) of X Xᵀ for float32 rows `x` (b, D), as a b x b
    matrix whose strict upper triangle is zero: half a full product's FLOPs.

    On the CPU, BLAS's symmetric rank-k update (ssyrk) computes it; on other devices (torch has no
    syrk) row blocks times the column blocks at or left of them, (blocks + 1) / (2 blocks) of the
    FLOPs. Measured at b = 512 on 2 cores: ssyrk 1.69x, 4 row blocks 1.49x a full product.
    """
    if x.device.type == "cpu":
        from scipy.linalg.blas import ssyrk

        rows = x.detach().float().contiguous().numpy()
        return torch.from_numpy(ssyrk(1.0, rows.T, trans=1, lower=1))
    return row_block_gram(x, blocks)


def row_block_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """`lower_gram` on any device: each row block times the column blocks at or left of it."""
    b = x.shape[0]
    out = torch.zeros(b, b, dtype=x.dtype, device=x.device)
    edges = [round(b * i / blocks) for i in range(blocks + 1)]
    for lo, hi in itertools.pairwise(edges):
        out[lo:hi, :hi] = x[lo:hi] @ x[:hi].T
    return out.tril_()


def triangle_size(b: int) -> int:
    """Values of a b x b lower triangle with its diagonal."""
    return b * (b + 1) // 2


@functools.lru_cache(maxsize=16)
def _tril_flat(b: int, device: torch.device) -> torch.Tensor:
    """Flat (row-major) positions of a b x b lower triangle, diagonal included."""
    rows, cols = torch.tril_indices(b, b, device=device)
    return rows * b + cols


@functools.lru_cache(maxsize=16)
def _strict_entries(b: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For the strict lower triangle of a b x b matrix: positions in the packed lower triangle
    (diagonal included, row-major), and the entries' rows and columns."""
    rows, cols = torch.tril_indices(b, b, -1, device=device)
    return rows * (rows + 1) // 2 + cols, rows, cols


def gram_triangle(
    x: torch.Tensor, offset: torch.Tensor, buffer: torch.Tensor | None = None
) -> torch.Tensor:
    """The stored Gram statistic of one batch: the lower triangle (row-major, diagonal included)
    of (X - offset)(X - offset)ᵀ in float32, with X the batch's flattened features.

    `buffer` (float32, at least X's size) receives X - offset; reusing one matters, since
    faulting in a fresh multi-MB array costs about as much as the product itself.
    """
    flat = x.reshape(len(x), -1)
    centred = None if buffer is None else buffer[: flat.numel()].view(flat.shape)
    g = lower_gram(torch.sub(flat, offset, out=centred))
    return g.reshape(-1)[_tril_flat(len(x), g.device)]  # (ssyrk's Fortran order: one copy)


class GramMaker:
    """Makes a store's Gram statistics batch by batch: each layer's offset is its first batch's
    mean (fixed for every later batch and pass), and one growing buffer serves the centring."""

    def __init__(self) -> None:
        self.offsets: dict[str, torch.Tensor] = {}
        self.buffer: torch.Tensor | None = None

    def __call__(self, name: str, output: torch.Tensor) -> torch.Tensor:
        flat = output.reshape(len(output), -1).float()
        if name not in self.offsets:
            self.offsets[name] = flat.mean(0, keepdim=True)
        if self.buffer is None or self.buffer.numel() < flat.numel():
            self.buffer = torch.empty(flat.numel(), device=flat.device)
        return gram_triangle(flat, self.offsets[name], self.buffer)


def ucentred_triangle(triangle: torch.Tensor, b: int) -> torch.Tensor:
    """U-centred Gram (float64) of a stored triangle, as its strict lower triangle times √2: the
    inner product of two such vectors is the Frobenius product of the U-centred Grams.

    With the diagonal zeroed and r the row sums, Ũ_ij = K_ij - (r_i + r_j) / (b - 2)
    + Σr / ((b - 1)(b - 2)) (Székely & Rizzo 2014), computed on the strict triangle alone.
    """
    positions, rows, cols = _strict_entries(b, triangle.device)
    k = triangle[positions].double()
    sums = torch.zeros(b, dtype=torch.float64, device=triangle.device)
    sums.index_add_(0, rows, k).index_add_(0, cols, k)
    means = sums / (b - 2) - sums.sum() / (2 * (b - 1) * (b - 2))
    return (k - means[rows] - means[cols]) * math.sqrt(2.0)


class GramLayer(Protocol):
    """One layer's stored Gram statistics (an activation store's `gram_layer(name)`)."""

    name: str

    def read_triangle(self, batch: int, out: np.ndarray) -> np.ndarray:
        """Fill `out` (float32) with batch `batch`'s triangle and return the filled part."""
        ...


def minibatch_cka_grams(
    models: Sequence[Sequence[GramLayer]],
    batch_sizes: Sequence[int],
    batch_passes: Sequence[int],
    pairs: Sequence[tuple[int, int]] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[tuple[int, int], CKAResult]:
    """Minibatch CKA for every requested model pair from stored Gram statistics: per batch, each
    layer's triangle is read once (one chunk), U-centred in float64 and the HSIC_1 of every pair is
    a product of the stacked vectors, exactly as from features. The models' stores must share the
    batches (`batch_sizes`, `batch_passes`: one entry per stored batch)."""
    pairs, used, jobs = _plan(models, pairs)
    all_batches = [(p, slice(0, b)) for p, b in zip(batch_passes, batch_sizes, strict=True)]
    keep = _usable(all_batches, list(batch_sizes))
    buffers = [np.empty(triangle_size(max(batch_sizes)), np.float32) for _ in range(2)]
    spent: dict[str, float] = {"read": 0.0, "gram": 0.0}

    def read(flat: int) -> torch.Tensor:
        t, idx = divmod(flat, len(jobs))
        k, i = jobs[idx]
        start = time.perf_counter()
        tri = models[k][i].read_triangle(keep[t], buffers[flat % 2])
        spent["read"] += time.perf_counter() - start
        return torch.from_numpy(tri)

    return _minibatch_hsic(
        models,
        pairs,
        [batch_sizes[t] for t in keep],
        [batch_passes[t] for t in keep],
        _prefetch(read, len(keep) * len(jobs)),
        lambda tri, b: ucentred_triangle(tri.to(device), b),
        progress,
        spent,
        timings,
    )


def _add_batch_hsic(
    vectors: dict[int, list[torch.Tensor]],
    pairs: Sequence[tuple[int, int]],
    b: int,
    cross: dict[tuple[int, int], list[np.ndarray]],
    selfs: dict[int, list[np.ndarray]],
) -> None:
    """HSIC_1 of every layer pair on one batch of b rows: products of the stacked U-centred Grams,
    scaled by 1 / (b (b - 3)) (Song et al. 2012)."""
    scale = 1.0 / (b * (b - 3))
    stacked = {k: torch.stack(v) for k, v in vectors.items()}
    for k, u in stacked.items():
        selfs[k].append(((u * u).sum(1) * scale).cpu().numpy())
    for p in pairs:
        cross[p].append(((stacked[p[0]] @ stacked[p[1]].T) * scale).cpu().numpy())


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
