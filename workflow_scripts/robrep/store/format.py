"""The activation store's format: its version, completeness flag, errors and layout.

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

from dataclasses import dataclass

COMPLETE = "robrep_complete"
FORMAT = "robrep.activations/3"  # 2: Gram statistics, passes, feature layers; 3: one Gram chunk per batch


# `activations.compat`: what a probed layer's value is. robrep: the module's output as the module
# returns it. release: what that tensor holds once the forward pass has ended, every ReLU in place,
# as the hooks of the released code of Cianfarani et al. (2022) see it (their `utils/features.py`
# keeps a view of each output): a BatchNorm followed by its ReLU reads the ReLU's output.
LAYER_VALUES = ("robrep", "release")
RELEASE_VALUES = "release"


class IncompleteStoreError(RuntimeError):
    """The store was not finished (killed extraction) and must be rebuilt."""


class MismatchedStoresError(ValueError):
    """Two stores hold different examples (sample ids or order) and cannot be compared."""


class NonFiniteActivationsError(ValueError):
    """A model produced NaN or inf activations: the model is broken; nothing is stored."""


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
