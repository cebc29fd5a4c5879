"""The minibatch measures from stored Grams: all-pairs time per measure, against linear CKA's on
the same Grams and against the in-memory feature-space implementation of the same measure.

Case (issue 26): two models of `--layers` Gram layers each (80: WRN-28-4 under `layers: all`),
one minibatch of b = `--b` examples (1024: the paper's), features of `--dim` values per layer.
Side by side in one run, on the same packed Grams (float32, as stored):

- per measure, `minibatch_measure_grams` over every a x b layer pair of one batch, from the
  packed Grams: seconds, and the ratio to minibatch linear CKA's seconds on the same Grams;
- per measure, the field's feature-space implementation (`tests/test_measures.reference`: scipy
  pdist + pearsonr/spearmanr, dcor, Kornblith's RBF CKA, the mutual-kNN and CKNNA transcriptions)
  on the same batch's features, timed on `--sample` layer pairs and scaled to all a x b pairs;
- the largest difference between the two on the sampled pairs (same batch: they must agree).

    .venv/bin/python benchmarks/bench_measures.py           # b = 1024, 80 + 80 layers
    .venv/bin/python benchmarks/bench_measures.py --quick   # b = 256, 12 + 12 layers
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import record

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


class BatchGrams:
    """A `GramSource` of one batch: the packed float32 Grams of in-memory features."""

    def __init__(self, features: list[np.ndarray]):
        b = len(features[0])
        upper, diag = np.triu_indices(b, 1), np.arange(b)
        self.names = [f"l{i}" for i in range(len(features))]
        self.batch_sizes, self.batch_passes = [b], [0]
        grams = [(x @ x.T).astype(np.float32) for x in features]
        self.packed = np.stack([np.r_[k[upper], k[diag, diag]] for k in grams], axis=1)

    def read(self, batch: int, out: np.ndarray) -> np.ndarray:
        return self.packed


def features(layers: int, b: int, dim: int, seed: int) -> list[np.ndarray]:
    """Layers that share structure (so the measures are not all near 0): a random walk of
    linear maps and tanh, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, dim))
    out = []
    for _ in range(layers):
        x = np.tanh(x @ rng.standard_normal((dim, dim)) / np.sqrt(dim))
        out.append(x + 0.1 * rng.standard_normal((b, dim)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--b", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--sample", type=int, default=4, help="layer pairs timed in feature space")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.b, args.dim = 12, 256, 64
    from test_measures import reference

    from robrep.similarity.measures import GRAM_MEASURES, MeasureSettings
    from robrep.similarity.minibatch import minibatch_measure_grams

    settings = MeasureSettings()
    side_a = features(args.layers, args.b, args.dim, 0)
    side_b = features(args.layers, args.b, args.dim, 1)
    sources = [BatchGrams(side_a), BatchGrams(side_b)]
    pairs = [(i, (i * 7 + 3) % args.layers) for i in range(args.sample)]
    figures: dict[str, dict[str, float]] = {}
    with threadpool_limits(args.threads):
        for name in GRAM_MEASURES:
            start = time.perf_counter()
            got = minibatch_measure_grams(sources, name, settings, [(0, 1)])[(0, 1)].cka
            grams = time.perf_counter() - start
            start = time.perf_counter()
            want = [
                reference(name, side_a[i].astype(np.float64), side_b[j], settings) for i, j in pairs
            ]
            per_pair = (time.perf_counter() - start) / len(pairs)
            figures[name] = {
                "grams_s": grams,
                "features_s": per_pair * args.layers**2,
                "max_difference": float(
                    max(abs(got[i, j] - w) for (i, j), w in zip(pairs, want, strict=True))
                ),
            }
    linear = figures["minibatch_cka"]["grams_s"]
    print(
        f"{args.layers} + {args.layers} layers, b = {args.b}, D = {args.dim}, "
        f"{args.threads} threads; all a x b pairs of one batch"
    )
    print(f"{'measure':24} {'from Grams':>11} {'x linear':>9} {'features':>11} {'x Grams':>8}")
    for name, row in figures.items():
        row["vs_linear"] = row["grams_s"] / linear
        row["features_vs_grams"] = row["features_s"] / row["grams_s"]
        print(
            f"{name:24} {row['grams_s']:10.2f}s {row['vs_linear']:8.1f}x "
            f"{row['features_s']:10.1f}s {row['features_vs_grams']:7.1f}x"
            f"   (max |diff| {row['max_difference']:.1e})"
        )
    record.write("bench_measures", args, figures, args.threads)


if __name__ == "__main__":
    main()
