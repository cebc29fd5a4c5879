"""Layer activations streamed into chunked Zarr v3 stores, and the read API the similarity engine uses.

One store per model x checkpoint x input kind. Each probed layer is one array of shape (N, D)
(D = C·H·W flattened) named after the layer, chunked (rows, D) — or (rows, max_chunk_features)
for very wide layers — beside `sample_ids` and `labels`. Every array carries xarray's dimension
names, so `xarray.open_zarr` opens a store as a Dataset. A store is written under a temporary name,
marked complete in its attributes, then renamed: nothing half-written ever looks finished.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn
from zarr.core.buffer.cpu import NDBuffer

from .attacks import AttackSpec, pgd
from .data import to_float
from .runtime import atomic_output

COMPLETE = "robrep_complete"
FORMAT = "robrep.activations/1"


class IncompleteStoreError(RuntimeError):
    """The store was not finished (killed extraction) and must be rebuilt."""


class MismatchedStoresError(ValueError):
    """Two stores hold different examples (sample ids or order) and cannot be compared."""


def _codec(compressor: str):
    if compressor == "zstd":
        return [zarr.codecs.ZstdCodec(level=1)]
    if compressor == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]
    if compressor == "none":
        return None
    raise ValueError(f"activations.compressor: {compressor!r} is not one of zstd, blosc, none")


class LayerRecorder:
    """Forward hooks that copy each probed layer's output once per recorded forward pass."""

    def __init__(self, model: nn.Module, layers: Sequence[str], pool: int | None = None):
        modules = dict(model.named_modules())
        self.layers = list(layers)
        self.pool = pool
        self.active = False
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def hook(module, args, output):
            if not self.active:
                return
            if name in self.outputs:
                raise RuntimeError(f"layer {name!r} fired twice in one forward pass")
            out = output.detach()
            fresh = False
            if self.pool and out.dim() == 4 and max(out.shape[-2:]) > self.pool:
                out, fresh = F.adaptive_avg_pool2d(out, self.pool), True  # a new tensor
            # Copy unless pooling already made a tensor nothing else refers to.
            self.outputs[name] = out.to("cpu", torch.float32, copy=not fresh)

        return hook

    @torch.no_grad()
    def record(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one forward pass and return {layer: output copy}; every layer must fire once."""
        self.outputs = {}
        self.active = True
        try:
            model(x)
        finally:
            self.active = False
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not fire during the forward pass")
        return self.outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def layer_shapes(model: nn.Module, layers: Sequence[str], example: torch.Tensor, pool: int | None):
    """Per-layer output shape (without batch) for one example input."""
    recorder = LayerRecorder(model, layers, pool)
    try:
        outs = recorder.record(model, example[:1])
    finally:
        recorder.remove()
    return {name: tuple(outs[name].shape[1:]) for name in layers}


@dataclass(frozen=True)
class StoreLayout:
    """How a store is laid out and what it keeps (config `activations`): rows per chunk, forward
    batch size, value type, compression, feature chunking and pooling."""

    chunk_rows: int = 100
    batch_size: int = 256
    dtype: str = "float32"
    compressor: str = "zstd"
    max_chunk_features: int | None = None
    pool: int | None = None


def _create_arrays(
    group: zarr.Group, shapes: dict[str, tuple[int, ...]], n: int, layout: StoreLayout
) -> dict[str, zarr.Array]:
    arrays = {}
    for name, shape in shapes.items():
        d = int(np.prod(shape))
        arrays[name] = group.create_array(
            name,
            shape=(n, d),
            chunks=(min(layout.chunk_rows, n), min(d, layout.max_chunk_features or d)),
            dtype=layout.dtype,
            compressors=_codec(layout.compressor),
            dimension_names=("sample", f"{name}.feature"),
            attributes={"shape": list(shape)},
        )
    return arrays


def extract_to_store(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    sample_ids: np.ndarray,
    path: str | Path,
    layers: Sequence[str],
    attrs: dict[str, Any],
    layout: StoreLayout = StoreLayout(),
    attack: AttackSpec | None = None,
    attack_seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Stream the activations of `layers` on `images` (or PGD versions of them) into a Zarr store.

    Only two forward batches of activations are held in memory. The store appears at `path` only
    when complete.
    """
    path = Path(path)
    model = model.to(device).eval()
    n = len(sample_ids)
    shapes = layer_shapes(model, layers, to_float(images[:1]).to(device), layout.pool)
    with atomic_output(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array(
            "sample_ids", data=np.asarray(sample_ids, dtype=np.int64), dimension_names=("sample",)
        )
        group.create_array(
            "labels", data=np.asarray(labels, dtype=np.int64), dimension_names=("sample",)
        )
        arrays = _create_arrays(group, shapes, n, layout)
        _stream_batches(
            model, images, labels, arrays, layout, attack, attack_seed, device, progress
        )
        group.attrs.update(
            {
                **attrs,
                "format": FORMAT,
                "layers": list(layers),
                "layer_shapes": {k: list(v) for k, v in shapes.items()},
                "n_examples": n,
                "dtype": layout.dtype,
                "attack": attack.as_dict() if attack is not None else None,
                "pool": layout.pool,
                COMPLETE: True,
            }
        )
    return path


def _stream_batches(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    arrays: dict[str, zarr.Array],
    layout: StoreLayout,
    attack: AttackSpec | None,
    attack_seed: int,
    device: str | torch.device,
    progress: bool,
) -> None:
    """Forward (attacked) batches of whole chunks and write each layer's rows.

    Compressing and writing batch t overlaps the forward pass of batch t + 1; at most two batches
    of activations are alive at once, whatever N is.
    """
    from tqdm import tqdm

    n = len(images)
    step = max(1, layout.batch_size // layout.chunk_rows) * layout.chunk_rows  # whole chunks
    recorder = LayerRecorder(model, list(arrays), layout.pool)

    def write(start: int, stop: int, outs: dict[str, torch.Tensor]) -> None:
        for name, array in arrays.items():
            array[start:stop] = (
                outs[name].reshape(stop - start, -1).numpy().astype(layout.dtype, copy=False)
            )

    pending = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        try:
            for start in tqdm(
                range(0, n, step),
                desc=f"extract {n} examples",
                file=sys.stderr,
                disable=not progress,
                mininterval=5,
            ):
                stop = min(start + step, n)
                x = to_float(images[start:stop]).to(device)
                if attack is not None:
                    y = torch.as_tensor(labels[start:stop]).to(device)
                    gen = torch.Generator().manual_seed(attack_seed * 1_000_003 + start)
                    x = pgd(model, x, y, attack, gen)
                outs = recorder.record(model, x)
                if pending is not None:
                    pending.result()
                pending = writer.submit(write, start, stop, outs)
            if pending is not None:
                pending.result()
        finally:
            recorder.remove()


class LayerArray:
    """One layer of a store: `shape`, `chunks`, `name`, row slicing and `oindex`, read lazily."""

    def __init__(self, array: zarr.Array, name: str):
        self.array = array
        self.name = name

    shape = property(lambda self: self.array.shape)
    chunks = property(lambda self: self.array.chunks)
    ndim = property(lambda self: self.array.ndim)
    dtype = property(lambda self: self.array.dtype)
    oindex = property(lambda self: self.array.oindex)

    def __getitem__(self, key):
        return self.array[key]

    def read_rows(self, rows: slice | np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill `out` (float32, (rows, D)) with rows of this layer and return it.

        float32 layers decode straight into `out`, so a caller that reuses its buffers reads
        with flat memory; other types are read and converted.
        """
        if self.array.dtype == np.float32:
            target = NDBuffer.from_numpy_array(out)
            if isinstance(rows, slice):
                self.array.get_basic_selection((rows,), out=target)
            else:
                self.array.get_orthogonal_selection((rows,), out=target)
            return out
        block = self.array[rows] if isinstance(rows, slice) else self.array.oindex[rows]
        np.copyto(out, block, casting="same_kind")
        return out

    def __len__(self) -> int:
        return self.shape[0]


class ActivationStore:
    """A complete activation store opened read-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"activation store {self.path} does not exist")
        self.group = zarr.open_group(str(self.path), mode="r")
        if self.group.attrs.get(COMPLETE) is not True:
            raise IncompleteStoreError(
                f"activation store {self.path} is incomplete (interrupted extraction); rebuild it"
            )
        self.attrs = dict(self.group.attrs)
        self.layers: list[str] = list(self.attrs["layers"])

    def layer(self, name: str) -> LayerArray:
        if name not in self.layers:
            raise KeyError(f"layer {name!r} not in {self.path}; layers: {', '.join(self.layers)}")
        return LayerArray(self.group[name], name)

    def select(self, names: Sequence[str] | None = None) -> list[LayerArray]:
        """Layer handles in network order (all layers by default)."""
        return [self.layer(name) for name in (names or self.layers)]

    @property
    def sample_ids(self) -> np.ndarray:
        return self.group["sample_ids"][:]

    @property
    def labels(self) -> np.ndarray:
        return self.group["labels"][:]

    def __len__(self) -> int:
        return int(self.attrs["n_examples"])

    def iter_chunks(
        self, names: Sequence[str] | None = None, rows: int | None = None
    ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """Aligned row blocks of the chosen layers, one block in memory at a time."""
        layers = self.select(names)
        step = rows or layers[0].chunks[0]
        for start in range(0, len(self), step):
            sl = slice(start, min(start + step, len(self)))
            yield sl, {layer.name: layer[sl] for layer in layers}


def check_aligned(stores: Sequence[ActivationStore]) -> None:
    """Raise MismatchedStoresError unless every store holds the same sample ids in the same order."""
    first = stores[0]
    ids = first.sample_ids
    for other in stores[1:]:
        if not np.array_equal(ids, other.sample_ids):
            raise MismatchedStoresError(
                f"activation stores hold different examples: {first.path} ({len(ids)} ids) vs "
                f"{other.path} ({len(other)} ids); compare stores built from the same evaluation "
                f"subset"
            )
