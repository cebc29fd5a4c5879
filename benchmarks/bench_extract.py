"""Extraction to Zarr vs the bare forward pass, and peak RSS at N and 4N (issue 3).

A real architecture (default: resnet18 on 32 x 32 RGB inputs, its `blocks` probe layers) runs
over the same synthetic inputs twice in one process: once as a bare forward pass, once through
`extract_to_store`. Inputs are generated batch by batch, so neither run holds N inputs. Peak RSS
is measured in child processes at N and 4N.

    .venv/bin/python benchmarks/bench_extract.py            # N = 1000 (and 4000 for RSS)
    .venv/bin/python benchmarks/bench_extract.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robrep.learn.models import build_model
from robrep.store.extract import extract_to_store
from robrep.store.format import StoreLayout

import record


class SyntheticImages:
    """N seeded random images in [0, 1], produced per slice (never all in memory)."""

    def __init__(self, n: int, shape: tuple[int, ...], seed: int = 0):
        self.n, self.shape, self.seed = n, shape, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.n)
        rng = np.random.default_rng([self.seed, start])
        return rng.random((stop - start, *self.shape), dtype=np.float32)


def model_for(arch: str, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, channels, 10, [0.5] * channels, [0.25] * channels).eval()


def bare_forward(model, images, batch):
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(torch.from_numpy(images[start : start + batch]))


def extract(model, images, batch, path, compressor, pool=None):
    n = len(images)
    extract_to_store(
        model,
        images,
        np.zeros(n, dtype=np.int64),
        np.arange(n),
        path,
        model.probe_layers("blocks"),
        {},
        StoreLayout(chunk_rows=batch, compressor=compressor, pool=pool),
        progress=False,
    )


def _rss_child(arch, shape, n, batch, compressor, pool, queue):
    model = model_for(arch, shape[0])
    tmp = Path(tempfile.mkdtemp())
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extract(model, SyntheticImages(n, shape), batch, tmp / "s.zarr", compressor, pool)
        queue.put((before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    finally:
        shutil.rmtree(tmp)


def peak_rss(arch, shape, n, batch, compressor, pool):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(arch, shape, n, batch, compressor, pool, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--compressor", default="zstd", choices=["zstd", "blosc", "none"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--pool",
        type=int,
        default=None,
        help="activations.pool: average-pool maps to <= pool x pool",
    )
    parser.add_argument("--quick", action="store_true", help="convnet on 16 x 16, N = 500")
    parser.add_argument(
        "--json", type=Path, help="where the figures go (default: benchmarks/results/)"
    )
    args = parser.parse_args()
    if args.quick:
        args.arch, args.size, args.n = "convnet", 16, 500
    shape = (args.channels, args.size, args.size)
    model = model_for(args.arch, args.channels)
    images = SyntheticImages(args.n, shape)
    bare_forward(model, SyntheticImages(args.batch, shape), args.batch)  # warm-up
    bare, ext = [], []
    tmp = Path(tempfile.mkdtemp())
    try:
        for r in range(args.repeats):  # interleaved, so drift hits both alike
            start = time.perf_counter()
            bare_forward(model, images, args.batch)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            extract(model, images, args.batch, tmp / f"s{r}.zarr", args.compressor, args.pool)
            ext.append(time.perf_counter() - start)
        written = sum(f.stat().st_size for f in (tmp / "s0.zarr").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp)
    layers = model.probe_layers("blocks")
    print(
        f"{args.arch} on {shape}, N={args.n}, batch {args.batch}, {len(layers)} probed layers, "
        f"{args.compressor}, pool {args.pool}, threads {torch.get_num_threads()}"
    )
    print(
        f"bare forward: {min(bare):.2f} s   extraction to Zarr: {min(ext):.2f} s   "
        f"ratio {min(ext) / min(bare):.2f}x (best of {args.repeats})"
    )
    seconds = min(bare)
    print(
        f"store on disk: {written / 2**20:.0f} MB ({written / 2**20 / seconds:.0f} MB per second of forward pass)"
    )
    (b1, p1), (b4, p4) = (
        peak_rss(args.arch, shape, n, args.batch, args.compressor, args.pool)
        for n in (args.n, 4 * args.n)
    )
    print(
        f"peak RSS: N={args.n}: {p1 / 2**20:.0f} MB   4N={4 * args.n}: {p4 / 2**20:.0f} MB   "
        f"ratio {p4 / p1:.3f} (growth during extraction {(p1 - b1) / 2**20:.0f} MB vs {(p4 - b4) / 2**20:.0f} MB)"
    )
    figures = {
        "bare_forward_s": min(bare),
        "extraction_s": min(ext),
        "extraction_over_forward": min(ext) / min(bare),
        "store_mb": written / 2**20,
        "peak_rss_n_mb": p1 / 2**20,
        "peak_rss_4n_mb": p4 / 2**20,
        "peak_rss_4n_over_n": p4 / p1,
    }
    record.write("bench_extract", args, figures, torch.get_num_threads())


if __name__ == "__main__":
    main()
