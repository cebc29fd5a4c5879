"""Representation similarity: the Gram statistic, out-of-core minibatch CKA and its views, and the
full-data metrics.

Read in this order: `batches` (the minibatch partition), `gram` (the Gram statistic stores hold),
`backend` (where the kernels compute: numpy on the CPU, torch on a GPU), `hsic` (HSIC_1 kernels),
`minibatch` (the accumulator), `views` (permutation null, by class), `result` (the result type),
`full` (full-data metrics).

The package's face: `from robrep.similarity import minibatch_cka` works for every public name
below. Names are loaded on first use; nothing here imports torch unless it computes on a GPU or is
handed torch tensors (extraction), so a CPU comparison runs on numpy alone.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "batches": ("MIN_BATCH", "Batch", "pass_batches"),
    "result": ("CKAResult", "DegenerateLayerWarning", "INTERVAL_LEVEL"),
    "gram": (
        "GramMaker",
        "GramSource",
        "offset_upper_gram",
        "pack_gram",
        "row_block_gram",
        "triangle_size",
        "unpack_gram",
        "upper_gram",
    ),
    "backend": ("Kernels", "NumpyKernels", "TorchKernels", "kernels_for"),
    "hsic": ("_batch_hsic", "_cross_products", "_side_terms"),
    "minibatch": ("FeatureGrams", "minibatch_cka", "minibatch_cka_grams", "minibatch_cka_multi"),
    "views": ("NULL_STREAM", "minibatch_cka_by_class", "minibatch_cka_null", "packed_permutation"),
    "full": (
        "FULL_METRICS",
        "LayerStats",
        "MetricOptions",
        "accumulate_gram",
        "center",
        "cka_from_grams",
        "full_data_similarity",
        "layer_stats",
        "rbf_gram",
        "ucenter",
    ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(n for n in _MODULE_OF if not n.startswith("_"))


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'robrep.similarity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"robrep.similarity.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
