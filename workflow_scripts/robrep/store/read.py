"""Reading an activation store: its layers' raw features and its Gram statistics, every chunk
checked (CRC32C, finite values) as it is read, and the check that two stores are comparable."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer.cpu import NDBuffer

from robrep.io.checksums import DamagedArtefactError, rebuild_command, verified_attrs
from robrep.io.zarrio import DamagedStoreError, checked_read
from robrep.similarity.gram import triangle_size
from robrep.store.format import COMPLETE, FORMAT, IncompleteStoreError, MismatchedStoresError


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
        if self.group.attrs.get("format") != FORMAT:
            raise ValueError(
                f"activation store {self.path} has format {self.group.attrs.get('format')!r}, "
                f"this robrep reads {FORMAT!r} (Gram statistics); rebuild it: snakemake "
                f"--forcerun extract"
            )
        try:  # the attributes decide the comparisons' coordinates: verified like the data
            self.attrs = verified_attrs(self.group.attrs, self.path)
        except DamagedArtefactError as err:
            raise DamagedStoreError(f"activation store {err}") from None
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
