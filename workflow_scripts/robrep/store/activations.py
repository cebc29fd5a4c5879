"""Layer activations streamed into chunked Zarr v3 stores, and the read API the similarity engine uses.

One store per model x checkpoint x input kind. For every probed layer it holds the Gram statistics
of minibatch CKA: for each minibatch of each pass (`pass_order`, shared by every model of a
dataset), the batch's Gram K = X Xᵀ (float32, after subtracting a fixed per-feature offset: the
first batch's mean) packed as its strict upper triangle row by row, then its diagonal. All layers'
packed Grams of a batch are one chunk of the (batch, entry, layer) array `gram`, so a comparison
reads one chunk per batch and store. Their size does not depend on the layers' widths. For the layers chosen as feature layers it also holds the raw
(optionally pooled) features, one (N, D) array per layer (D = C·H·W flattened) named after the
layer, chunked (rows, D) — or (rows, max_chunk_features) — for the full-data metrics. Every array
carries xarray's dimension names, so `xarray.open_zarr` opens a store as a Dataset. A store is
written under a temporary name, marked complete in its attributes, then renamed: nothing
half-written ever looks finished.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
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

from robrep.io.atomic import atomic_output
from robrep.io.checksums import rebuild_command
from robrep.io.zarrio import DamagedStoreError, checked_read, chunk_codecs
from robrep.learn.data import to_float
from robrep.learn.models import LayerHooks
from robrep.similarity.batches import Batch, pass_batches
from robrep.similarity.gram import GramMaker, triangle_size

COMPLETE = "robrep_complete"
FORMAT = "robrep.activations/3"  # 2: Gram statistics, passes, feature layers; 3: one Gram chunk per batch


class IncompleteStoreError(RuntimeError):
    """The store was not finished (killed extraction) and must be rebuilt."""


class MismatchedStoresError(ValueError):
    """Two stores hold different examples (sample ids or order) and cannot be compared."""


class NonFiniteActivationsError(ValueError):
    """A model produced NaN or inf activations: the model is broken; nothing is stored."""


def pooled_copy(out: torch.Tensor, pool: int | None) -> torch.Tensor:
    """A float32 CPU copy of a layer output, feature maps average-pooled to pool x pool when
    larger."""
    fresh = False
    if pool and out.dim() == 4 and max(out.shape[-2:]) > pool:
        out, fresh = F.adaptive_avg_pool2d(out, pool), True  # a new tensor
    # Copy unless pooling already made a tensor nothing else refers to.
    return out.to("cpu", torch.float32, copy=not fresh)


class LayerRecorder:
    """Forward hooks that keep what `transform(name, output)` makes of each probed layer's output,
    once per recorded forward pass (default: a pooled float32 CPU copy). The transform runs as
    the layer fires, so a forward pass never holds more than one layer's raw output at once."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        pool: int | None = None,
        transform: Callable[[str, torch.Tensor], Any] | None = None,
    ):
        self.layers = list(layers)
        self.transform = transform or (lambda name, out: pooled_copy(out, pool))
        self.outputs: dict[str, Any] = {}
        self.hooks = LayerHooks(model, self.layers, self._keep)

    def _keep(self, name: str, output: torch.Tensor) -> None:
        self.outputs[name] = self.transform(name, output.detach())

    @torch.no_grad()
    def record(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        """Run one forward pass and return {layer: transformed output}; every layer must fire once."""
        self.outputs = {}
        self.hooks.start()
        try:
            model(x)
        finally:
            self.hooks.stop()
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not fire during the forward pass")
        return self.outputs

    def remove(self) -> None:
        self.hooks.remove()


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
    """How a store is laid out and what it keeps (config `activations`): rows per feature chunk,
    feature value type, compression, feature chunking and pooling, and the minibatch partition
    of the Gram statistics (CKA batch size; passes come with `pass_order`)."""

    chunk_rows: int = 100
    dtype: str = "float32"
    compressor: str = "zstd"
    max_chunk_features: int | None = None
    pool: int | None = None
    cka_batch_size: int = 100


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
            compressors=chunk_codecs(layout.compressor),
            dimension_names=("sample", f"{name}.feature"),
            attributes={"shape": list(shape)},
        )
    return arrays


def _create_grams(group: zarr.Group, layers: Sequence[str], batches: Sequence[Batch]) -> zarr.Array:
    """The (batch, entry, layer) float32 array `gram`: each batch's packed Grams of every layer
    (columns in `layers` order; a shorter last batch fills the first entries), one chunk per batch.

    Not compressed (zstd saved 6% of a Gram store's bytes in the benchmark and made reading it,
    which is all a comparison does, about twice as slow), but checksummed."""
    width = triangle_size(max(_rows(rows) for _, rows in batches))
    return group.create_array(
        "gram",
        shape=(len(batches), width, len(layers)),
        chunks=(1, width, len(layers)),
        dtype="float32",
        compressors=chunk_codecs("none"),
        dimension_names=("batch", "gram_entry", "gram_layer"),
    )


def _rows(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def check_pass_order(pass_order: np.ndarray, n: int) -> np.ndarray:
    """`pass_order` as an int64 (passes, n) array of permutations of 0..n-1, or ValueError."""
    order = np.asarray(pass_order, dtype=np.int64)
    if order.ndim != 2 or order.shape[1] != n or order.shape[0] < 1:
        raise ValueError(f"pass_order must have shape (passes, {n}), got {order.shape}")
    for p, row in enumerate(order):
        if not np.array_equal(np.sort(row), np.arange(n)):
            raise ValueError(f"pass_order[{p}] is not a permutation of the {n} examples")
    return order


def extract_to_store(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    sample_ids: np.ndarray,
    path: str | Path,
    layers: Sequence[str],
    attrs: dict[str, Any],
    layout: StoreLayout = StoreLayout(),
    features: Sequence[str] | None = None,
    pass_order: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Stream the Gram statistics of `layers` (every batch of every pass of `pass_order`; default
    one pass in stored order) and the raw features of `features` (any probe layers, default: the
    same as `layers`) on `images` (benign test images or stored adversarial examples,
    `adversarial.read_adversarial`) into a Zarr store.

    Memory holds one forward batch's Grams and features (two while the previous batch is
    written). The store appears at `path` only when complete.
    """
    path = Path(path)
    model = model.to(device).eval()
    n = len(sample_ids)
    features = list(layers) if features is None else list(features)
    order = check_pass_order(np.arange(n)[None] if pass_order is None else pass_order, n)
    batches = pass_batches(order, layout.cka_batch_size)
    shapes = layer_shapes(model, features, to_float(images[:1]).to(device), layout.pool)
    with atomic_output(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, values, dims in (
            ("sample_ids", sample_ids, ("sample",)),
            ("labels", labels, ("sample",)),
            ("pass_order", order, ("pass", "sample")),
            ("gram_batch_size", [_rows(r) for _, r in batches], ("batch",)),
            ("gram_batch_pass", [p for p, _ in batches], ("batch",)),
        ):
            group.create_array(
                name,
                data=np.asarray(values, np.int64),
                dimension_names=dims,
                compressors=chunk_codecs("zstd"),
            )
        arrays = _create_arrays(group, shapes, n, layout)
        grams = _create_grams(group, layers, batches)
        who = ", ".join(
            f"{k} {attrs[k]}" for k in ("model_id", "checkpoint", "inputs") if k in attrs
        )
        _stream_batches(
            model, images, batches, arrays, grams, layers, layout, device, progress, sample_ids, who
        )
        group.attrs.update(
            {
                **attrs,
                "format": FORMAT,
                "layers": list(layers),
                "feature_layers": features,
                "layer_shapes": {k: list(v) for k, v in shapes.items()},
                "n_examples": n,
                "dtype": layout.dtype,
                "pool": layout.pool,
                "cka_batch_size": layout.cka_batch_size,
                "passes": len(order),
                COMPLETE: True,
            }
        )
    return path


def _stream_batches(
    model: nn.Module,
    inputs: np.ndarray,
    batches: Sequence[Batch],
    arrays: dict[str, zarr.Array],
    grams: zarr.Array,
    gram_layers: Sequence[str],
    layout: StoreLayout,
    device: str | torch.device,
    progress: bool,
    sample_ids: np.ndarray,
    who: str = "",
) -> None:
    """Forward every batch of every pass; each Gram layer's packed Gram is made on the device as
    the layer fires, into the batch's column of one of two alternating batch buffers, and in
    pass 0 the feature layers' (pooled) outputs are copied out. Non-finite activations stop it
    (`NonFiniteActivationsError`, naming `who`, the layer and the first bad example).

    Writing batch t overlaps the forward pass of batch t + 1.
    """
    from tqdm import tqdm

    make_gram = GramMaker()  # offsets fixed by the first batch of pass 0 (HSIC_1 ignores them)
    column = {name: i for i, name in enumerate(gram_layers)}
    buffers = [np.empty(grams.shape[1:], np.float32) for _ in range(2)]
    now: dict[str, Any] = {"features": False, "grams": buffers[0], "rows": slice(0, 0)}

    def refuse(name: str, out: torch.Tensor) -> NonFiniteActivationsError:
        bad = (~torch.isfinite(out.reshape(len(out), -1))).any(1).nonzero()
        where = "their Gram overflows float32"
        if len(bad):
            row = int(bad[0])
            sample = int(np.asarray(sample_ids)[now["rows"]][row])
            where = f"first at example {sample} (row {row} of its batch)"
        return NonFiniteActivationsError(
            f"{who or 'model'}: layer {name!r} has non-finite activations, {where}; the model is "
            f"broken (NaN or inf weights or a diverged training run): nothing was stored"
        )

    def transform(name: str, out: torch.Tensor) -> torch.Tensor | None:
        if name in column:
            packed = make_gram(name, out)
            if not np.isfinite(packed).all():
                raise refuse(name, out)
            now["grams"][: len(packed), column[name]] = packed
        if now["features"] and name in arrays:
            if name not in column and not torch.isfinite(out).all():
                raise refuse(name, out)
            return pooled_copy(out, layout.pool).reshape(len(out), -1)
        return None

    def write(t: int, rows: slice | np.ndarray, outs: dict[str, Any], packed: np.ndarray) -> None:
        size = triangle_size(_rows(rows))
        grams[t, :size] = packed[:size]
        for name, made in outs.items():
            if made is None:
                continue
            values = made.numpy().astype(layout.dtype, copy=False)
            if isinstance(rows, slice):
                arrays[name][rows] = values
            else:
                arrays[name].oindex[rows] = values

    recorder = LayerRecorder(
        model, list(dict.fromkeys([*gram_layers, *arrays])), transform=transform
    )
    pending = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        try:
            for t, (p, rows) in enumerate(
                tqdm(batches, desc="extract", file=sys.stderr, disable=not progress, mininterval=5)
            ):
                now.update(features=p == 0, grams=buffers[t % 2], rows=rows)
                x = to_float(inputs[rows]).to(device)
                outs = recorder.record(model, x)
                if pending is not None:
                    pending.result()
                pending = writer.submit(write, t, rows, outs, buffers[t % 2])
            if pending is not None:
                pending.result()
        finally:
            recorder.remove()


class LayerArray:
    """One layer of a store: `shape`, `chunks`, `name`, row slicing and `oindex`, read lazily;
    every read verifies its chunks' checksums and that the values are finite."""

    def __init__(self, array: zarr.Array, name: str, path: Path):
        self.array = array
        self.name = name
        self.path = path

    shape = property(lambda self: self.array.shape)
    chunks = property(lambda self: self.array.chunks)
    ndim = property(lambda self: self.array.ndim)
    dtype = property(lambda self: self.array.dtype)

    def _read(self, where: Any, read: Callable[[], Any]) -> Any:
        if isinstance(where, slice | np.ndarray):
            where = _describe_rows(where)
        elif not isinstance(where, str):
            where = f"selection {where!r}"
        return checked_read(self.path, self.name, where, read)

    def __getitem__(self, key):
        return self._read(key, lambda: self.array[key])

    @property
    def oindex(self) -> _CheckedIndex:
        return _CheckedIndex(self)

    def read_rows(self, rows: slice | np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill `out` (float32, (rows, D)) with rows of this layer and return it.

        float32 layers decode straight into `out`, so a caller that reuses its buffers reads
        with flat memory; other types are read and converted.
        """
        if self.array.dtype == np.float32:
            target = NDBuffer.from_numpy_array(out)

            def read() -> np.ndarray:
                if isinstance(rows, slice):
                    self.array.get_basic_selection((rows,), out=target)
                else:
                    self.array.get_orthogonal_selection((rows,), out=target)
                return out

            return self._read(_describe_rows(rows), read)
        block = self[rows] if isinstance(rows, slice) else self.oindex[rows]
        np.copyto(out, block, casting="same_kind")
        return out

    def __len__(self) -> int:
        return self.shape[0]


class _CheckedIndex:
    def __init__(self, layer: LayerArray):
        self.layer = layer

    def __getitem__(self, key):
        return self.layer._read(key, lambda: self.layer.array.oindex[key])


def _describe_rows(rows: slice | np.ndarray) -> str:
    if isinstance(rows, slice):
        return f"rows {rows.start or 0}-{rows.stop - 1}" if rows.stop is not None else "rows"
    return f"rows {int(np.min(rows))}-{int(np.max(rows))} ({len(rows)} rows)"


class StoredGrams:
    """A store's Gram statistics as a `similarity.GramSource`: `read(t, out)` reads batch t's
    packed Grams of every layer (one chunk, checksum and finiteness verified) into a caller's
    buffer, so a reader that reuses its buffers reads with flat memory."""

    def __init__(
        self, array: zarr.Array, names: list[str], sizes: np.ndarray, passes: np.ndarray, path: Path
    ):
        self.array = array
        self.names = names
        self.batch_sizes = [int(b) for b in sizes]
        self.batch_passes = [int(p) for p in passes]
        self.path = path

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        size = triangle_size(self.batch_sizes[batch])
        target = out[: size * len(self.names)].reshape(size, len(self.names))

        def read() -> np.ndarray:
            self.array.get_basic_selection(
                (batch, slice(0, size), slice(None)), out=NDBuffer.from_numpy_array(target)
            )
            return target

        return checked_read(self.path, "gram", f"chunk of batch {batch}", read)


class ActivationStore:
    """A complete activation store opened read-only.

    `layers`: the layers with Gram statistics; `feature_layers`: those with raw features
    (`layer(name)`, `select()`), any probe layers; `pass_order`, `batch_sizes`, `batch_passes`:
    the minibatch partition of the Gram statistics.
    """

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
        if self.attrs.get("format") != FORMAT:
            raise ValueError(
                f"activation store {self.path} has format {self.attrs.get('format')!r}, this "
                f"robrep reads {FORMAT!r} (Gram statistics); rebuild it: snakemake --forcerun extract"
            )
        self.layers: list[str] = list(self.attrs["layers"])
        self.feature_layers: list[str] = list(self.attrs["feature_layers"])
        self.batch_sizes = self._read("gram_batch_size")
        self.batch_passes = self._read("gram_batch_pass")

    def layer(self, name: str) -> LayerArray:
        """The raw features of a feature layer."""
        if name not in self.feature_layers:
            where = "has no raw features" if name in self.layers else "not"
            raise KeyError(  # layers: names the Gram layers too, for a user looking for one
                f"layer {name!r} {where} in {self.path}; layers: {', '.join(self.layers)}; with "
                f"raw features: {', '.join(self.feature_layers) or 'none'} (activations.features)"
            )
        return LayerArray(self._array(name), name, self.path)

    def select(self, names: Sequence[str] | None = None) -> list[LayerArray]:
        """Feature layer handles in network order (all feature layers by default)."""
        return [self.layer(name) for name in (names or self.feature_layers)]

    def grams(self) -> StoredGrams:
        """Every Gram layer's packed Grams, batch by batch (columns in `layers` order)."""
        return StoredGrams(
            self._array("gram"), self.layers, self.batch_sizes, self.batch_passes, self.path
        )

    def _read(self, name: str) -> np.ndarray:
        """A whole small array, verified."""
        return checked_read(self.path, name, "all chunks", lambda: self._array(name)[:])

    def _array(self, name: str) -> zarr.Array:
        """An array the store's attributes promise; missing means damaged."""
        try:
            return self.group[name]
        except KeyError:
            raise DamagedStoreError(
                f"activation store {self.path} lacks its array {name!r} (deleted or damaged); "
                f"rebuild it: {rebuild_command(self.path)}"
            ) from None

    @property
    def pass_order(self) -> np.ndarray:
        """(passes, N) positions into `sample_ids`: the order of each pass's minibatches."""
        return self._read("pass_order")

    @property
    def cka_batch_size(self) -> int:
        return int(self.attrs["cka_batch_size"])

    @property
    def sample_ids(self) -> np.ndarray:
        return self._read("sample_ids")

    @property
    def labels(self) -> np.ndarray:
        return self._read("labels")

    def __len__(self) -> int:
        return int(self.attrs["n_examples"])

    def verify(self) -> None:
        """Read every array the store's attributes promise, chunk by chunk (one chunk in memory at
        a time), each checksum and value verified; the first damage raises DamagedStoreError."""
        for name in ("sample_ids", "labels", "pass_order", "gram_batch_size", "gram_batch_pass"):
            self._read(name)
        grams = self.grams()
        buffer = np.empty(triangle_size(max(grams.batch_sizes)) * len(self.layers), np.float32)
        for batch in range(len(grams.batch_sizes)):
            grams.read(batch, buffer)
        for layer in self.select():
            for start in range(0, len(layer), layer.chunks[0]):
                layer[start : start + layer.chunks[0]]

    def iter_chunks(
        self, names: Sequence[str] | None = None, rows: int | None = None
    ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """Aligned row blocks of the chosen feature layers, one block in memory at a time."""
        layers = self.select(names)
        step = rows or layers[0].chunks[0]
        for start in range(0, len(self), step):
            sl = slice(start, min(start + step, len(self)))
            yield sl, {layer.name: layer[sl] for layer in layers}


def check_aligned(stores: Sequence[ActivationStore]) -> None:
    """Raise MismatchedStoresError unless every store holds the same sample ids in the same order
    and the same minibatch partition (pass orders and CKA batch size), naming both stores."""
    first = stores[0]
    ids = first.sample_ids
    for other in stores[1:]:
        if not np.array_equal(ids, other.sample_ids):
            raise MismatchedStoresError(
                f"activation stores hold different examples: {first.path} ({len(ids)} ids) vs "
                f"{other.path} ({len(other)} ids); compare stores built from the same evaluation "
                f"subset"
            )
        if first.cka_batch_size != other.cka_batch_size or not np.array_equal(
            first.pass_order, other.pass_order
        ):
            raise MismatchedStoresError(
                f"activation stores have different minibatches: {first.path} (batch "
                f"{first.cka_batch_size}, {len(first.pass_order)} passes) vs {other.path} (batch "
                f"{other.cka_batch_size}, {len(other.pass_order)} passes, "
                f"{'same' if np.array_equal(first.pass_order[:1], other.pass_order[:1]) else 'other'}"
                f" orders); build both with the same activations.cka_batch_size, passes and "
                f"split_seed"
            )
