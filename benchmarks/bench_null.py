"""The permutation null's cost at the paper's shape: per-draw cross products vs the full product.

Each draw of `minibatch_cka_null` shuffles side b's rows within a batch (a gather of its packed
Gram triangle) and needs HSIC_1 of every a x b layer pair and each layer's self term. It used to
take the full product of the stacked triangles, (a + b)² layer pairs and both sides' row sums,
per draw (`_batch_hsic`); it now takes the a x b cross products per draw (`_cross_products`) and
each side's one-sided terms once per batch (`_side_terms`; a shuffle only relabels the row sums).
Side by side in one run, on the same packed Grams (80 layers a side, WRN-28-4's count under
`layers: all`; b = 1024, the paper's batch), interleaved, best of `--repeats`:

- per draw: gather + full product (before) vs gather + cross products (now);
- once per batch now: both sides' one-sided terms;
- `--draws` draws on one batch: `minibatch_cka_null` as the comparison rule runs it vs the
  per-draw work it did before (gather + `_batch_hsic` per draw);
- that both give the same CKA (max difference).

    .venv/bin/python benchmarks/bench_null.py              # b = 1024, 80 + 80 layers, 20 draws
    .venv/bin/python benchmarks/bench_null.py --quick      # b = 256, 20 + 20 layers
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import record


class PackedGrams:
    """A `GramSource` of one batch of random packed triangles (their values do not change the
    work: the cost is the gather and the products)."""

    def __init__(self, batch: int, layers: int, seed: int):
        from robrep.similarity import triangle_size

        self.names = [f"l{i}" for i in range(layers)]
        self.batch_sizes, self.batch_passes = [batch], [0]
        rng = np.random.default_rng(seed)
        self.packed = rng.standard_normal((triangle_size(batch), layers), dtype=np.float32)

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        target = out[: self.packed.size].reshape(self.packed.shape)
        target[:] = self.packed
        return target


def null_before(a: PackedGrams, b: PackedGrams, draws: int, seed: int) -> np.ndarray:
    """`minibatch_cka_null` on one batch as it ran before: per draw, the gather and the full
    product of both sides' stacked triangles (`_batch_hsic`), its a x b block and diagonal."""
    from robrep.similarity import NULL_STREAM, NumpyKernels, _batch_hsic, packed_permutation

    n, width = a.batch_sizes[0], len(a.names)
    kernels = NumpyKernels()
    staging = kernels.staging(width + len(b.names))
    rng = np.random.default_rng(np.random.SeedSequence([seed, NULL_STREAM]))
    out = []
    for _ in range(draws):
        shuffled = b.packed[packed_permutation(n, rng.permutation(n))]
        hsic = _batch_hsic([a.packed, shuffled], n, staging, kernels)
        selfs = np.diagonal(hsic)
        out.append(hsic[:width, width:] / np.sqrt(np.outer(selfs[:width], selfs[width:])))
    return np.stack(out)


def best_of(repeats: int, fns: dict) -> dict[str, float]:
    """Best seconds of each callable over `repeats` rounds, run interleaved."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=80, help="layers of each side")
    parser.add_argument(
        "--draws", type=int, default=20, help="null draws (similarity.permutations)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="b = 256, 20 layers: a smoke run")
    parser.add_argument(
        "--json", type=Path, help="where the figures go (default: benchmarks/results/)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.layers, args.draws = 256, 20, 5
    threadpool_limits(args.threads)  # numpy's BLAS: the kernels run on numpy on the CPU

    from robrep.similarity import (
        NumpyKernels,
        _batch_hsic,
        _cross_products,
        _side_terms,
        minibatch_cka_null,
        packed_permutation,
    )

    b, width, draws = args.batch, args.layers, args.draws
    a_side, b_side = PackedGrams(b, width, 0), PackedGrams(b, width, 1)
    order = np.random.default_rng(2).permutation(b)
    cpu = NumpyKernels()
    staging = cpu.staging(2 * width)

    def draw(product):
        return product(
            [a_side.packed, b_side.packed[packed_permutation(b, order)]], b, staging, cpu
        )

    seconds = best_of(
        args.repeats,
        {
            "draw before": lambda: draw(_batch_hsic),
            "draw now": lambda: draw(lambda s, *rest: _cross_products(*s, *rest)),
            "terms now": lambda: [_side_terms(s.packed, b, staging, cpu) for s in (a_side, b_side)],
            "null before": lambda: null_before(a_side, b_side, draws, seed=0),
            "null now": lambda: minibatch_cka_null(a_side, b_side, draws, seed=0),
        },
    )
    difference = np.abs(
        minibatch_cka_null(a_side, b_side, draws, seed=0) - null_before(a_side, b_side, draws, 0)
    ).max()
    print(
        f"b = {b}, {width} + {width} layers, {args.threads} threads, best of {args.repeats}, "
        f"seconds on one batch"
    )
    print(f"  per draw, gather + full product (before)     {seconds['draw before']:8.3f}")
    print(f"  per draw, gather + cross products (now)      {seconds['draw now']:8.3f}")
    print(f"  per batch, both sides' one-sided terms (now) {seconds['terms now']:8.3f}")
    print(f"  {draws} draws before                             {seconds['null before']:8.3f}")
    print(f"  {draws} draws now (minibatch_cka_null)           {seconds['null now']:8.3f}")
    print(f"  per draw before / now: {seconds['draw before'] / seconds['draw now']:.2f}x")
    print(f"  {draws} draws before / now: {seconds['null before'] / seconds['null now']:.2f}x")
    print(f"  max |CKA now - CKA before| over the draws: {difference:.1e}")
    figures = {f"{key.replace(' ', '_')}_s": value for key, value in seconds.items()}
    figures["draw_before_over_now"] = seconds["draw before"] / seconds["draw now"]
    figures["null_before_over_now"] = seconds["null before"] / seconds["null now"]
    figures["max_abs_cka_difference"] = float(difference)
    record.write("bench_null", args, figures, args.threads)


if __name__ == "__main__":
    main()
