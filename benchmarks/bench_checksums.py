"""What verified data costs: extraction and all-pairs comparison with and without verification.

Verified is what robrep does: a CRC32C checksum on every chunk written and checked on every read,
and every value read checked to be finite. Unverified drops both (the codec and the read checks,
patched out in the child process). Case: bench_gram's (wrn-22-2 probed at every layer, b = 512,
N = 1024, 2 passes, 2 threads, Gram statistics plus block-layer features). Each measurement runs
in its own child process; the variants alternate, `--repeats` times, and the best of each counts.

    .venv/bin/python benchmarks/bench_checksums.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import record  # noqa: E402
from isolated import run_isolated  # noqa: E402


def _unverified() -> None:
    import robrep.store.extract as writing
    import robrep.store.read as reading

    codec = writing.chunk_codecs
    writing.chunk_codecs = lambda name: [
        c for c in codec(name) if type(c).__name__ != "Crc32cCodec"
    ]
    reading.checked_read = lambda path, array, where, read: read()


def _extract(verified: bool, seed: int, path: str, n: int, batch: int, passes: int, threads: int):
    import numpy as np
    import torch
    from bench_gram import images, model

    from robrep.learn.data import pass_orders
    from robrep.store.extract import extract_to_store
    from robrep.store.format import StoreLayout

    if not verified:
        _unverified()
    torch.set_num_threads(threads)
    net = model("wrn-22-2", seed)
    start = time.perf_counter()
    extract_to_store(
        net,
        images(n),
        np.zeros(n, np.int64),
        np.arange(n),
        path,
        net.probe_layers("all"),
        {
            "model_id": f"wrn-22-2.standard.seed{seed}",
            "dataset": "cifar10",
            "arch": "wrn-22-2",
            "method_id": "standard",
            "method": {"method": "standard", "id": "standard", "norm": None, "eps": 0.0},
            "seed": seed,
            "checkpoint": "final",
            "epoch": 1,
            "inputs": "benign",
        },
        StoreLayout(chunk_rows=batch, cka_batch_size=batch),
        features=net.probe_layers("blocks"),
        pass_order=pass_orders(n, passes, 0),
        progress=False,
    )
    return time.perf_counter() - start


def _compare(verified: bool, a: str, b: str, threads: int):
    import torch

    from robrep.study.compare import compare_stores

    if not verified:
        _unverified()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare_stores(a, b, ["minibatch_cka", "linear_cka", "svcca"], intervals=False, attrs={})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=HERE / "data" / "checksums")
    parser.add_argument("--quick", action="store_true", help="b = 64, 1 pass: a smoke run")
    parser.add_argument(
        "--json", type=Path, help="where the figures go (default: benchmarks/results/)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.passes, args.repeats = 64, 1, 1
    from robrep.workers import short_spin_environment

    with warnings.catch_warnings():  # this process measures nothing; its children inherit it
        warnings.simplefilter("ignore")
        os.environ.update(short_spin_environment())
    n = args.batch * args.batches
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for verified in (True, False):
            tag = "verified" if verified else "unverified"
            paths = [str(args.dir / f"{tag}{seed}.zarr") for seed in (0, 1)]
            for seed, path in enumerate(paths):
                shutil.rmtree(path, ignore_errors=True)
                seconds = run_isolated(
                    _extract, verified, seed, path, n, args.batch, args.passes, args.threads
                )
                times.setdefault(f"extract_{tag}", []).append(seconds)
            times.setdefault(f"compare_{tag}", []).append(
                run_isolated(_compare, verified, *paths, args.threads)
            )
    best = {key: min(values) for key, values in times.items()}
    for key, value in best.items():
        print(f"{key:22s} {value:8.3f} s  (all: {', '.join(f'{v:.2f}' for v in times[key])})")
    for stage in ("extract", "compare"):
        ratio = best[f"{stage}_verified"] / best[f"{stage}_unverified"]
        print(f"{stage}: verified / unverified = {ratio:.3f}  (target <= 1.03)")
        best[f"{stage}_verified_over_unverified"] = ratio
    record.write("bench_checksums", args, best, args.threads)
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
