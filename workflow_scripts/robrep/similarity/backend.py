"""Where the HSIC kernels compute: numpy/BLAS on the CPU (a CPU job never imports torch), torch on
a GPU. The kernels (`hsic`) are written once against the few operations below; each backend does
them in float64 and returns numpy arrays.

`kernels_for(device)` picks one: "cpu" is `NumpyKernels`, any other device `TorchKernels`. Passing
a `Kernels` object instead of a device chooses the implementation explicitly (the tests run the
torch kernels on the CPU to check that both give the same numbers).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

STAGING_BYTES = 2**24  # one float64 row block of stacked triangles: about 16 MB


def staging_rows(columns: int) -> int:
    """Rows of a float64 row block of `columns` stacked layers (at least 1024)."""
    return max(1024, STAGING_BYTES // (8 * columns))


@functools.lru_cache(maxsize=16)
def strict_row_starts(b: int) -> np.ndarray:
    """Where each row's strict-upper entries start in the packed order of a b x b Gram (row i holds
    columns i+1 .. b-1), and one past the end: (b + 1,) offsets."""
    counts = np.arange(b - 1, -1, -1)
    return np.concatenate([[0], np.cumsum(counts)])


class Kernels(Protocol):
    """The operations the HSIC kernels need, on one device, in float64."""

    device: Any

    def zeros(self, *shape: int) -> Any: ...
    def host_buffer(self, size: int) -> np.ndarray: ...
    def staging(self, columns: int) -> Any: ...
    def upload(self, packed: np.ndarray) -> Any: ...
    def add_products(self, out: Any, a: Any, b: Any) -> None: ...
    def add_row_sums(self, row_sums: Any, block: Any, entries: slice, b: int) -> None: ...
    def outer(self, a: Any, b: Any) -> Any: ...
    def take_rows(self, x: Any, rows: np.ndarray) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...


class NumpyKernels:
    """numpy/BLAS on the CPU. Row sums of a packed strict triangle are one slice per Gram row
    (its entries are contiguous, its columns consecutive): no scatter, no index arrays."""

    device = "cpu"

    def zeros(self, *shape: int) -> np.ndarray:
        return np.zeros(shape)

    def host_buffer(self, size: int) -> np.ndarray:
        """A float32 buffer a store's Grams are read into."""
        return np.empty(size, np.float32)

    def staging(self, columns: int) -> np.ndarray:
        """Float64 row blocks of stacked triangles."""
        return np.empty((staging_rows(columns), columns))

    def upload(self, packed: np.ndarray) -> np.ndarray:
        """A batch's packed float32 Grams where the kernels compute: here, as they are."""
        return packed

    def add_products(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """out += aᵀ b (BLAS's syrk when b is a)."""
        out += a.T @ b

    def add_row_sums(self, row_sums: np.ndarray, block: np.ndarray, entries: slice, b: int) -> None:
        """row_sums (b, layers) += the row sums of the symmetric matrix whose strict triangle's
        packed entries `entries` are the rows of `block`."""
        starts = strict_row_starts(b)
        lo, hi = entries.start, entries.stop
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        for i in range(first, b - 1):
            e0, e1 = max(starts[i], lo), min(starts[i + 1], hi)
            if e0 >= e1:
                break
            part = block[e0 - lo : e1 - lo]
            row_sums[i] += part.sum(0)
            col = i + 1 + e0 - starts[i]
            row_sums[col : col + e1 - e0] += part

    def outer(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.outer(a, b)

    def take_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[np.asarray(rows)]

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x


class TorchKernels:
    """torch on `device` (a GPU in the pipeline; the CPU in tests). A batch's packed float32
    Grams are copied up once (from pinned host buffers on CUDA, asynchronously), then converted
    to float64, gathered and multiplied on the device; row sums are two `index_add_` scatters."""

    def __init__(self, device: str | torch.device) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def zeros(self, *shape: int) -> torch.Tensor:
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def host_buffer(self, size: int) -> np.ndarray:
        """A float32 buffer in pinned host memory on CUDA (so uploads from it are asynchronous).
        A caller reuses it only after the kernels' results of its batch were read back
        (`to_numpy` waits for the device), when its upload has finished."""
        pin = self.device.type == "cuda"
        return self.torch.empty(size, dtype=self.torch.float32, pin_memory=pin).numpy()

    def staging(self, columns: int) -> torch.Tensor:
        return self.torch.empty(
            staging_rows(columns), columns, dtype=self.torch.float64, device=self.device
        )

    def upload(self, packed: np.ndarray) -> torch.Tensor:
        return self.torch.from_numpy(packed).to(self.device, non_blocking=True)

    def add_products(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        out.addmm_(a.T, b)

    def add_row_sums(self, row_sums: torch.Tensor, block: torch.Tensor, entries: slice, b: int):
        rows, cols = self._strict_entries(b)
        row_sums.index_add_(0, rows[entries], block).index_add_(0, cols[entries], block)

    @functools.lru_cache(maxsize=16)  # noqa: B019 (one instance per comparison)
    def _strict_entries(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of each packed strict-upper entry of a b x b Gram, on the device."""
        rows, cols = np.triu_indices(b, 1)
        torch = self.torch
        return torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)

    def outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.torch.outer(a, b)

    def take_rows(self, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        return x[self.torch.from_numpy(np.asarray(rows)).to(self.device)]

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


def kernels_for(device: Any) -> Kernels:
    """The kernels for `device` ("cpu", "cuda", a torch.device), or `device` itself if it is one."""
    if hasattr(device, "add_row_sums"):
        return device
    if str(device) == "cpu":
        return NumpyKernels()
    return TorchKernels(device)
