"""The Gram statistic, the store format's contract: each layer's b x b minibatch Gram of
X − offset (float32, a symmetric product), packed as its strict upper triangle row by row, then
its diagonal. Extraction writes it (`GramMaker`); `GramSource` is what the accumulator reads.
numpy arrays are multiplied by BLAS; torch is imported only for torch tensors (a GPU, extraction)."""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


def triangle_size(b: int) -> int:
    """Values of one packed b x b Gram: its upper triangle, diagonal included."""
    return b * (b + 1) // 2


@functools.lru_cache(maxsize=16)
def _pack_positions(b: int) -> np.ndarray:
    """Flat positions, in a row-major b x b matrix whose upper triangle holds K, of the packed
    order: the strict upper triangle row by row, then the diagonal."""
    rows, cols = np.triu_indices(b, 1)
    return np.concatenate([rows * b + cols, np.arange(b) * (b + 1)])


def upper_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """A row-major b x b matrix whose upper triangle (diagonal included) is X Xᵀ of float32 rows
    `x` (b, D), the rest zero: half a full product's FLOPs.

    On the CPU, BLAS's symmetric rank-k update (ssyrk; its column-major lower triangle is the
    row-major upper one, no copy); on other devices (torch has no syrk) each row block times the
    column blocks at or right of it, (blocks + 1) / (2 blocks) of the FLOPs.
    """
    if x.device.type == "cpu":
        import torch
        from scipy.linalg.blas import ssyrk

        rows = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(ssyrk(1.0, rows.T, trans=1, lower=1).T)
    return row_block_gram(x, blocks)


def row_block_gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """`upper_gram` on any device: each row block times the column blocks at or right of it."""
    import torch

    b = x.shape[0]
    out = torch.zeros(b, b, dtype=x.dtype, device=x.device)
    edges = [round(b * i / blocks) for i in range(blocks + 1)]
    for lo, hi in itertools.pairwise(edges):
        out[lo:hi, lo:] = x[lo:hi] @ x[lo:].T
    return out.triu_()


def pack_gram(upper: torch.Tensor | np.ndarray) -> np.ndarray:
    """The packed float32 Gram statistic of a b x b matrix whose upper triangle holds K: the strict
    upper triangle row by row, then the diagonal (one gather)."""
    if not isinstance(upper, np.ndarray):  # a torch tensor
        return pack_gram_on_device(upper).cpu().numpy()
    return np.take(upper.reshape(-1), _pack_positions(upper.shape[0]))


def pack_gram_on_device(upper: torch.Tensor) -> torch.Tensor:
    """`pack_gram` of a torch matrix, left on its device (no host copy)."""
    return upper.reshape(-1)[_device_positions(upper.shape[0], upper.device)]


@functools.lru_cache(maxsize=16)
def _device_positions(b: int, device: torch.device) -> torch.Tensor:
    """`_pack_positions(b)` on `device`, copied there once."""
    import torch

    return torch.from_numpy(_pack_positions(b)).to(device)


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
        threads = threads or _compute_threads()
        self.helpers = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def __call__(self, key: Any, output: np.ndarray | torch.Tensor) -> np.ndarray:
        """The packed Gram of one batch of layer `key`: (b, ...) rows, numpy or torch."""
        if isinstance(output, np.ndarray):
            x = np.asarray(output.reshape(len(output), -1), dtype=np.float32)
        else:
            flat = output.detach().reshape(len(output), -1)
            if flat.device.type != "cpu":
                return self.packed_on_device(key, flat).cpu().numpy()
            x = flat.float().numpy()
        if key not in self.offsets:
            self.offsets[key] = x.mean(0)  # float32: an offset need not be exact
        return pack_gram(offset_upper_gram(x, self.offsets[key], self.scratch, self.helpers))

    def packed_on_device(self, key: Any, output: torch.Tensor) -> torch.Tensor:
        """The packed Gram of one batch of layer `key` as float32 on the output's device (any torch
        device): X − offset into one growing buffer (a fresh multi-MB array per layer costs about
        as much as the product), row-block product, packing, all on the device."""
        import torch

        x = output.detach().reshape(len(output), -1).float()
        if key not in self.offsets:
            self.offsets[key] = x.mean(0, keepdim=True)
        if self.buffer is None or self.buffer.numel() < x.numel():
            self.buffer = torch.empty(x.numel(), device=x.device)
        centred = torch.sub(x, self.offsets[key], out=self.buffer[: x.numel()].view(x.shape))
        return pack_gram_on_device(row_block_gram(centred))


def _compute_threads() -> int:
    """The threads a CPU job computes with: torch's setting where torch is loaded, else the CPUs
    this process may run on."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))


def on_device(x: np.ndarray, device: Any) -> np.ndarray | torch.Tensor:
    """`x` where `device` is the CPU (numpy, no torch), else a torch tensor on `device`."""
    if str(device) == "cpu":
        return x
    import torch

    return torch.from_numpy(x).to(device)


class GramSource(Protocol):
    """One model's Gram statistics, batch by batch (a store's `grams()`, or `FeatureGrams`)."""

    names: list[str]  # the layers, in the order of the packed columns
    batch_sizes: Sequence[int]  # rows of each batch
    batch_passes: Sequence[int]  # the pass each batch belongs to

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        """Batch `batch`'s packed Grams as a (triangle_size(b), layers) float32 view of `out`."""
        ...
