"""Extraction: a model's probed layers streamed, batch by batch of every pass, into an activation
store (Gram statistics of every layer, raw features of the feature layers), under a temporary
name that is renamed only when complete."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from robrep.io.atomic import atomic_output
from robrep.io.checksums import sign_attrs
from robrep.io.zarrio import chunk_codecs
from robrep.learn.data import to_float
from robrep.learn.models import LayerHooks, inplace_relus
from robrep.similarity.batches import Batch, pass_batches
from robrep.similarity.gram import GramMaker, triangle_size
from robrep.store.format import (
    COMPLETE,
    FORMAT,
    LAYER_VALUES,
    RELEASE_VALUES,
    NonFiniteActivationsError,
    StoreLayout,
)


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
    once per recorded forward pass (default: a pooled float32 CPU copy).

    `compat` (`format.LAYER_VALUES`): under "robrep" the transform runs as the layer fires, so a
    forward pass never holds more than one layer's raw output at once. Under "release" the pass
    runs with in-place ReLUs and every output is kept until it ends, then transformed: the values
    the released code's hooks read."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        pool: int | None = None,
        transform: Callable[[str, torch.Tensor], Any] | None = None,
        compat: str = LAYER_VALUES[0],
    ):
        if compat not in LAYER_VALUES:
            raise ValueError(
                f"activations.compat: {compat!r} is not one of {', '.join(LAYER_VALUES)}"
            )
        self.layers = list(layers)
        self.transform = transform or (lambda name, out: pooled_copy(out, pool))
        self.deferred = compat == RELEASE_VALUES
        self.outputs: dict[str, Any] = {}
        self.hooks = LayerHooks(model, self.layers, self._keep)

    def _keep(self, name: str, output: torch.Tensor) -> None:
        # Deferred: a view of the output, which a later in-place op may still change.
        out = output.detach()
        self.outputs[name] = out if self.deferred else self.transform(name, out)

    @torch.no_grad()
    def record(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        """Run one forward pass and return {layer: transformed output}; every layer must fire once."""
        self.outputs = {}
        self.hooks.start()
        try:
            if self.deferred:
                with inplace_relus(model):
                    model(x)
                self.outputs = {
                    name: self.transform(name, out) for name, out in self.outputs.items()
                }
            else:
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
    compat: str = LAYER_VALUES[0],
) -> Path:
    """Stream the Gram statistics of `layers` (every batch of every pass of `pass_order`; default
    one pass in stored order) and the raw features of `features` (any probe layers, default: the
    same as `layers`) on `images` (benign test images or stored adversarial examples,
    `adversarial.read_adversarial`) into a Zarr store. `compat`: the layers' values
    (`format.LAYER_VALUES`, `LayerRecorder`).

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
            model,
            images,
            batches,
            arrays,
            grams,
            layers,
            layout,
            device,
            progress,
            sample_ids,
            who,
            compat,
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
                "compat": compat,
                COMPLETE: True,
            }
        )
        sign_attrs(group.attrs)
    return path


def _grams_on_device(device: str | torch.device) -> bool:
    """Whether extraction makes the Grams with torch on `device` (any device but the CPU, where
    numpy/BLAS makes them)."""
    return torch.device(device).type != "cpu"


class DeviceGrams:
    """One batch's packed Grams of every layer, made on the device into one (entries, layers)
    buffer with a non-finite flag per layer, then copied to host memory once per batch: into one
    of two alternating host buffers (pinned on CUDA, so the copy is asynchronous), while the
    writer thread stores the other."""

    def __init__(self, shape: tuple[int, int], device: str | torch.device):
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self.grams = torch.empty(shape, dtype=torch.float32, device=self.device)
        self.bad = torch.zeros(shape[1], dtype=torch.bool, device=self.device)
        self.host = [torch.empty(shape, dtype=torch.float32, pin_memory=pin) for _ in range(2)]
        self.buffers = [h.numpy() for h in self.host]

    def put(self, column: int, packed: torch.Tensor) -> None:
        self.grams[: len(packed), column] = packed
        self.bad[column] = ~torch.isfinite(packed).all()

    def finish(self, t: int) -> list[int]:
        """Copy batch t's Grams into host buffer t % 2 and return the columns that were not
        finite: one host sync per batch, after which the copy (queued first) is complete."""
        self.host[t % 2].copy_(self.grams, non_blocking=True)
        bad = self.bad.cpu().nonzero().flatten().tolist()
        self.bad.zero_()
        return bad


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
    compat: str = LAYER_VALUES[0],
) -> None:
    """Forward every batch of every pass; each Gram layer's packed Gram is made on the device as
    the layer fires, into the batch's column of one of two alternating batch buffers (on a GPU
    through `DeviceGrams`: one copy per batch), and in pass 0 the feature layers' (pooled)
    outputs are copied out. Non-finite activations stop it (`NonFiniteActivationsError`, naming
    `who`, the layer and the first bad example; on a GPU the batch is rerun with per-layer
    checks to find them).

    Writing batch t overlaps the forward pass of batch t + 1.
    """
    from tqdm import tqdm

    make_gram = GramMaker()  # offsets fixed by the first batch of pass 0 (HSIC_1 ignores them)
    column = {name: i for i, name in enumerate(gram_layers)}
    on_device = DeviceGrams(grams.shape[1:], device) if _grams_on_device(device) else None
    buffers = (
        on_device.buffers
        if on_device is not None
        else [np.empty(grams.shape[1:], np.float32) for _ in range(2)]
    )
    now: dict[str, Any] = {
        "features": False,
        "grams": buffers[0],
        "rows": slice(0, 0),
        "checked": on_device is None,  # per layer, on the host
    }

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
        if name in column and not now["checked"]:
            on_device.put(column[name], make_gram.packed_on_device(name, out))
        elif name in column:
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
        model, list(dict.fromkeys([*gram_layers, *arrays])), transform=transform, compat=compat
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
                if on_device is not None and on_device.finish(t):
                    now["checked"] = True  # rerun the batch checking each layer: raises
                    recorder.record(model, x)
                    raise RuntimeError(f"{who}: non-finite Grams that no layer check found")
                if pending is not None:
                    pending.result()
                pending = writer.submit(write, t, rows, outs, buffers[t % 2])
            if pending is not None:
                pending.result()
        finally:
            recorder.remove()
