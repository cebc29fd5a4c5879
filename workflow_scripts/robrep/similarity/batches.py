"""The minibatch partition that extraction and comparison share (Nguyen et al. 2021, minibatch
CKA): every pass's seeded order of the N examples cut into consecutive batches of b rows, and the
checks on which batches HSIC_1 can use. Pure numpy."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BATCH = 4  # HSIC_1 divides by n (n - 3)


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


def _size(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _name(array: Any, default: str) -> str:
    return str(getattr(array, "name", None) or default)


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
