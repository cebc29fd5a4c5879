"""All-pairs minibatch CKA on a Zarr store: robrep vs torch-cka, ckatorch and the paper's per-pair code.

Case (issue 4): 2 models x 10 layers, N = 5000, feature widths 4096-16384, batch 500; all 10 x 10
cross pairs plus both self matrices. Every implementation reads the same Zarr store, in the same
process, with the same torch thread count. Peak RSS of each implementation is measured in its own
child process so they do not mask each other.

    make bench-env                     # torch-cka 0.21 and ckatorch 1.0.3 into benchmarks/.env
    .venv/bin/python benchmarks/bench_cka.py            # the full case (writes ~4 GB)
    .venv/bin/python benchmarks/bench_cka.py --quick    # a small smoke case
    .venv/bin/python benchmarks/bench_cka.py --in-memory  # arrays in memory vs stacked Grams

The per-pair approach of the paper's released code (Cianfarani et al. 2022) is re-expressed as
`paper_per_pair`: Grams per pair and HSIC_1 with trace(K @ L), an O(b^3) product per pair.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / ".env"))
sys.path.insert(0, str(HERE))

import record  # noqa: E402


def make_store(path: Path, n: int, widths: list[int], models: int, chunk: int, seed: int = 0):
    """Two 'models' of correlated random layers; each model's layer k mixes a shared signal."""
    if (path / "done").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(seed)
    group = zarr.open_group(str(path), mode="w")
    signal = rng.standard_normal((n, 64), dtype=np.float32)
    for m in range(models):
        for k, width in enumerate(widths):
            arr = group.create_array(
                f"m{m}/l{k}",
                shape=(n, width),
                chunks=(chunk, width),
                dtype="float32",
                compressors=[zarr.codecs.ZstdCodec(level=1)],
            )
            mix = rng.standard_normal((64, width), dtype=np.float32) / 8
            for start in range(0, n, chunk):
                block = signal[start : start + chunk] @ mix
                block += (0.5 + 0.1 * k) * rng.standard_normal(block.shape, dtype=np.float32)
                arr[start : start + chunk] = block
    (path / "done").write_text("ok")


def layers(path: Path, model: int, count: int):
    """The layers as the store's read API offers them (`read_rows` fills reused buffers)."""
    from robrep.store.read import LayerArray

    group = zarr.open_group(str(path), mode="r")
    return [LayerArray(group[f"m{model}/l{k}"], f"l{k}") for k in range(count)]


# --------------------------------------------------------------------------------------------
# Implementations: each returns (cross, self_a, self_b) CKA matrices.


def run_robrep(path, n_layers, batch, limit):
    """robrep over all rows, or over the first `limit` batches (for the RSS-vs-N check)."""
    from robrep.similarity import minibatch_cka_multi

    a, b = layers(path, 0, n_layers), layers(path, 1, n_layers)
    if limit:
        a = [_Head(x, limit * batch) for x in a]
        b = [_Head(x, limit * batch) for x in b]
    timings: dict[str, float] = {}
    res = minibatch_cka_multi([a, b], [(0, 1), (0, 0), (1, 1)], batch_size=batch, timings=timings)
    return [res[(0, 1)].cka, res[(0, 0)].cka, res[(1, 1)].cka], timings


class _Head:
    """The first `rows` rows of a layer (to limit slow competitors to a few batches)."""

    def __init__(self, array, rows):
        self.array, self.rows = array, rows
        self.shape = (rows, *array.shape[1:])
        self.chunks = array.chunks
        self.ndim = array.ndim
        self.name = getattr(array, "name", None)

    def __getitem__(self, key):
        return self.array[key]

    def read_rows(self, rows, out):
        return self.array.read_rows(rows, out)


class StoreModel(torch.nn.Module):
    """A stand-in 'network' whose layer outputs are rows read from the store, for hook-based tools."""

    def __init__(self, arrays, batch, shape3d=False):
        super().__init__()
        self.arrays, self.batch, self.shape3d = arrays, batch, shape3d
        for k in range(len(arrays)):
            self.add_module(f"l{k}", torch.nn.Identity())

    def forward(self, x):
        t = int(x.reshape(-1)[0])
        rows = slice(t * self.batch, (t + 1) * self.batch)
        for k, arr in enumerate(self.arrays):
            feat = torch.from_numpy(np.asarray(arr[rows]))
            getattr(self, f"l{k}")(feat[None] if self.shape3d else feat)
        return x


def _loader(n_batches):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(torch.arange(n_batches)), batch_size=1)


def run_torch_cka(path, n_layers, batch, limit):
    import warnings

    from torch_cka import CKA

    n_batches = limit or zarr.open_group(str(path))["m0/l0"].shape[0] // batch
    names = [f"l{k}" for k in range(n_layers)]
    out = []
    for i, j in ((0, 1), (0, 0), (1, 1)):
        m1 = StoreModel(layers(path, i, n_layers), batch)
        m2 = m1 if i == j else StoreModel(layers(path, j, n_layers), batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = CKA(m1, m2, f"m{i}", f"m{j}x", names, names)
            cka.compare(_loader(n_batches))
        out.append(cka.hsic_matrix.numpy())
    return out, {}


def run_ckatorch(path, n_layers, batch, limit):
    import warnings

    from ckatorch import CKA

    n_batches = limit or zarr.open_group(str(path))["m0/l0"].shape[0] // batch
    names = [f"l{k}" for k in range(n_layers)]
    out = []
    for i, j in ((0, 1), (0, 0), (1, 1)):
        m1 = StoreModel(layers(path, i, n_layers), batch, shape3d=True)
        m2 = m1 if i == j else StoreModel(layers(path, j, n_layers), batch, shape3d=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = CKA(m1, m2, names, names, f"m{i}", f"m{j}x")
            out.append(cka(_loader(n_batches), epochs=1).numpy())
    return out, {}


def _hsic1_trace(k, l_):
    """HSIC_1 as in the paper's released code: trace(K @ L) and friends, zero diagonals."""
    n = k.shape[0]
    ones = torch.ones(n, 1, dtype=k.dtype)
    result = torch.trace(k @ l_)
    result += (ones.T @ k @ ones @ ones.T @ l_ @ ones).item() / ((n - 1) * (n - 2))
    result -= (ones.T @ k @ l_ @ ones).item() * 2 / (n - 2)
    return result.item() / (n * (n - 3))


def paper_per_pair(path, n_layers, batch, limit):
    """Per batch and per layer pair: both Grams and an O(b^3) trace(K @ L), as in the paper's code."""
    n = zarr.open_group(str(path))["m0/l0"].shape[0]
    n_batches = limit or n // batch
    out = []
    for i, j in ((0, 1), (0, 0), (1, 1)):
        a, b = layers(path, i, n_layers), layers(path, j, n_layers)
        kl = np.zeros((n_layers, n_layers))
        kk = np.zeros((n_layers, n_layers))
        ll = np.zeros((n_layers, n_layers))
        for t in range(n_batches):
            rows = slice(t * batch, (t + 1) * batch)
            xa = [torch.from_numpy(np.asarray(x[rows])) for x in a]
            xb = xa if i == j else [torch.from_numpy(np.asarray(x[rows])) for x in b]
            for p in range(n_layers):
                for q in range(n_layers):
                    k = xa[p] @ xa[p].T
                    l_ = xb[q] @ xb[q].T
                    k.fill_diagonal_(0)
                    l_.fill_diagonal_(0)
                    kl[p, q] += _hsic1_trace(k, l_)
                    kk[p, q] += _hsic1_trace(k, k)
                    ll[p, q] += _hsic1_trace(l_, l_)
        out.append(kl / np.sqrt(kk * ll))
    return out, {}


IMPLEMENTATIONS = {
    "robrep": run_robrep,
    "robrep (first N/2)": run_robrep,
    "torch-cka 0.21": run_torch_cka,
    "ckatorch 1.0.3": run_ckatorch,
    "paper per-pair O(b^3)": paper_per_pair,
}


def _child(name, path, n_layers, batch, limit, threads, queue):
    torch.set_num_threads(threads)
    if name.startswith("robrep"):
        import robrep.similarity  # noqa: F401  (imports count towards the baseline)
    else:
        import ckatorch  # noqa: F401
        import torch_cka  # noqa: F401
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result, timings = IMPLEMENTATIONS[name](Path(path), n_layers, batch, limit)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timings["rss_after_imports"] = baseline
    queue.put((seconds, rss, [np.asarray(r, dtype=float).tolist() for r in result], timings))


def measure(name, path, n_layers, batch, limit, threads):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child, args=(name, str(path), n_layers, batch, limit, threads, queue)
    )
    proc.start()
    seconds, rss, result, timings = queue.get()
    proc.join()
    return seconds, rss, [np.asarray(r) for r in result], timings


def sgemm_rate(batch: int, widths: list[int], threads: int) -> float:
    """Measured float32 GEMM rate (FLOP/s) on the Gram shapes (b x D) @ (D x b)."""
    torch.set_num_threads(threads)
    flops = seconds = 0.0
    for width in widths:
        x = torch.randn(batch, width)
        x @ x.T
        start = time.perf_counter()
        for _ in range(3):
            x @ x.T
        seconds += time.perf_counter() - start
        flops += 3 * 2 * batch * batch * width
    return flops / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small case: N=1000, widths 512-2048")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--min-width", type=int, default=4096)
    parser.add_argument("--max-width", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", default=list(IMPLEMENTATIONS), help="implementations")
    parser.add_argument(
        "--limit-batches",
        type=int,
        default=0,
        help="competitors process only this many batches (0 = all); robrep always does all",
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.n, args.min_width, args.max_width = 1000, 512, 2048
    widths = np.linspace(args.min_width, args.max_width, args.layers).astype(int).tolist()
    path = args.data / f"cka_n{args.n}_w{args.min_width}-{args.max_width}_l{args.layers}.zarr"
    start = time.perf_counter()
    make_store(path, args.n, widths, 2, args.batch)
    store_bytes = 2 * args.n * sum(widths) * 4
    print(
        f"store: {path} ({store_bytes / 2**30:.2f} GiB of float32), built in {time.perf_counter() - start:.0f} s"
    )
    print(
        f"case: 2 models x {args.layers} layers, N={args.n}, widths {widths}, batch {args.batch}, threads {args.threads}"
    )
    rate = sgemm_rate(args.batch, widths, args.threads)
    gram_flops = 2 * sum(2 * args.batch**2 * w for w in widths) * (args.n // args.batch)
    rows = {}
    reference = None
    for name in args.only:
        n_batches = args.n // args.batch
        limit = {"robrep": 0, "robrep (first N/2)": n_batches // 2}.get(name, args.limit_batches)
        seconds, rss, result, timings = measure(
            name, path, args.layers, args.batch, limit, args.threads
        )
        scale = n_batches / limit if limit and not name.startswith("robrep") else 1.0
        full_seconds = seconds * scale
        rows[name] = {
            "seconds": seconds,
            "full_case_seconds": full_seconds,
            "peak_rss": rss,
            "batches": limit or args.n // args.batch,
            **timings,
        }
        if name == "robrep":
            reference = result
            rows[name]["gram_gflops"] = gram_flops / timings["gram"] / 1e9
            rows[name]["gram_fraction_of_sgemm"] = gram_flops / timings["gram"] / rate
        elif reference is not None and not limit and not name.startswith("ckatorch"):
            # ckatorch's CKA class keeps only the last minibatch's value (it assigns rather
            # than accumulates), so its numbers are not comparable; its time is.
            rows[name]["max_abs_diff_vs_robrep"] = float(
                max(np.nanmax(np.abs(r - q)) for r, q in zip(result, reference, strict=True))
            )
    print(f"\nmeasured sgemm rate: {rate / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    base = rows.get("robrep", {}).get("full_case_seconds")
    print(
        "(full-case s extrapolates a competitor limited to fewer batches linearly; x robrep uses it)"
    )
    print(
        f"{'implementation':24s} {'batches':>7s} {'wall s':>9s} {'full-case s':>11s} {'x robrep':>9s} {'peak RSS':>10s}"
    )
    for name, row in rows.items():
        ratio = row["full_case_seconds"] / base if base else float("nan")
        print(
            f"{name:24s} {row['batches']:7d} {row['seconds']:9.1f} {row['full_case_seconds']:11.1f} "
            f"{ratio:9.1f} {row['peak_rss'] / 2**20:7.0f} MB {row['rss_after_imports'] / 2**20:11.0f} MB"
        )
    if "robrep" in rows:
        r = rows["robrep"]
        print(
            f"\nrobrep Gram phase: {r['gram']:.1f} s at {r['gram_gflops']:.1f} GFLOP/s = "
            f"{100 * r['gram_fraction_of_sgemm']:.0f}% of measured sgemm; reading {r['read']:.1f} s"
        )
    for name, row in rows.items():
        if "max_abs_diff_vs_robrep" in row:
            print(f"max |CKA difference| {name} vs robrep: {row['max_abs_diff_vs_robrep']:.2e}")
    if "robrep" in rows and "robrep (first N/2)" in rows:
        half, full = rows["robrep (first N/2)"]["peak_rss"], rows["robrep"]["peak_rss"]
        print(
            f"robrep peak RSS at N/2 vs N: {half / 2**20:.0f} MB vs {full / 2**20:.0f} MB ({full / half:.2f}x)"
        )
    record.write(
        "bench_cka", args, {"sgemm_gflops_in_case": rate / 1e9, "rows": rows}, args.threads
    )


def stacked_gram_accumulator(models, batch: int, dtype) -> np.ndarray:
    """The simplest all-pairs minibatch CKA (Nguyen et al. 2021): per batch, each layer's centred
    features in `dtype`, its Gram, U-centred (float64), all layers' Grams stacked as columns and
    one product for every HSIC_1; summed over batches, normalised at the end. Cross block a x b."""
    from robrep.similarity.full import ucenter

    n, widths = len(models[0][0]), [len(m) for m in models]
    total = np.zeros((sum(widths), sum(widths)))
    for start in range(0, n - batch + 1, batch):
        stacked = np.empty((batch * batch, sum(widths)))
        for column, x in enumerate(layer for m in models for layer in m):
            rows = x[start : start + batch].astype(dtype)
            rows -= rows.mean(0)
            stacked[:, column] = ucenter(rows @ rows.T).ravel()
        total += stacked.T @ stacked
    norms = np.sqrt(np.diag(total))
    return (total / np.outer(norms, norms))[: widths[0], widths[0] :]


def in_memory_case(args: argparse.Namespace) -> None:
    """`minibatch_cka_multi` on in-memory arrays vs `stacked_gram_accumulator` in float64 and in
    float32, same data, same process, interleaved, best of `--repeats` (issue 24's case: N = 4000,
    b = 500, 6 x 6 layers of 512-4096 features)."""
    from threadpoolctl import threadpool_limits

    from robrep.similarity import minibatch_cka_multi

    threadpool_limits(args.threads)
    n = 1000 if args.quick else 4000
    widths = [512, 1024, 2048, 4096, 2048, 1024]
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((n, 32), dtype=np.float32)
    models = [
        [
            signal @ rng.standard_normal((32, w), dtype=np.float32)
            + rng.standard_normal((n, w), dtype=np.float32)
            for w in widths
        ]
        for _ in range(2)
    ]
    runs = {
        "robrep minibatch_cka_multi": lambda: (
            minibatch_cka_multi(models, [(0, 1)], args.batch)[(0, 1)].cka
        ),
        "stacked Grams, float64": lambda: stacked_gram_accumulator(models, args.batch, np.float64),
        "stacked Grams, float32": lambda: stacked_gram_accumulator(models, args.batch, np.float32),
    }
    best, results = dict.fromkeys(runs, float("inf")), {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    ours = best["robrep minibatch_cka_multi"]
    print(
        f"in memory: 2 models x 6 layers {widths}, N = {n}, b = {args.batch}, {args.threads} threads"
    )
    figures = {}
    for name, seconds in best.items():
        diff = np.abs(results[name] - results["robrep minibatch_cka_multi"]).max()
        print(
            f"  {name:28s} {seconds:7.3f} s  {seconds / ours:5.2f}x robrep's time  max |dCKA| {diff:.1e}"
        )
        figures[name] = {"seconds": seconds, "over_robrep": seconds / ours, "max_abs_diff": diff}
    record.write("bench_cka_in_memory", args, figures, args.threads)


if __name__ == "__main__":
    if "--in-memory" in sys.argv:
        parser = argparse.ArgumentParser(description=in_memory_case.__doc__.split("\n")[0])
        parser.add_argument("--in-memory", action="store_true")
        parser.add_argument("--quick", action="store_true", help="N = 1000")
        parser.add_argument("--batch", type=int, default=500)
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--json", type=Path, help="where the figures go")
        in_memory_case(parser.parse_args())
    else:
        main()
