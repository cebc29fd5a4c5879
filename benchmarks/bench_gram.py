"""Gram statistics at the paper's shape: store bytes, extraction cost, all-pairs comparison time.

Case (issue 10): a WRN probed at every Conv/BN/ReLU/pool/linear layer (`all`), unpooled 32x32x3
inputs, two models (seeds 0 and 1), CKA batch b = 512, N = 2b (2 batches) and 2 passes, 2 threads.
Every measurement runs in its own child process (peak RSS does not mask), side by side in one run:

- store bytes: Gram statistics (on disk, and uncompressed) vs float32 raw features of the same
  layers (on disk, and uncompressed); the same ratio computed for the paper's setting;
- extraction: with Gram statistics vs the bare forward passes over the same batches; the Gram
  phase alone as an effective rate (2 b² D FLOPs per Gram / time) vs the measured sgemm rate on
  the same shapes (a full X Xᵀ);
- all-pairs minibatch CKA (a x b, a x a, b x b): from Gram statistics vs from the feature stores,
  and vs the paper's per-pair code (`bench_cka.paper_per_pair`: Grams and an O(b³) trace per layer
  pair), timed on a sample of pairs of one batch and scaled to all pairs and batches;
- peak RSS of extraction at N and 2N.

    .venv/bin/python benchmarks/bench_gram.py            # the case above (writes ~9 GB)
    .venv/bin/python benchmarks/bench_gram.py --quick    # a small smoke case
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import record  # noqa: E402
from isolated import run_isolated  # noqa: E402

MB = 2**20


def model(arch: str, seed: int):
    """A WRN with seeded weights and batch-norm statistics from a few random batches."""
    from robrep.learn.models import build_model

    torch.manual_seed(seed)
    net = build_model(arch, 3, 10, [0.5] * 3, [0.25] * 3)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(64, 3, 32, 32))
    return net.eval()


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32)


def _extract(arch, seed, n, batch, passes, path, features, threads):
    """Extraction as the rule runs it; the Gram phase in it (every `GramMaker` call) is timed."""
    from robrep.learn.data import pass_orders
    from robrep.similarity import GramMaker
    from robrep.store.extract import extract_to_store
    from robrep.store.format import StoreLayout

    torch.set_num_threads(threads)
    phase = {"seconds": 0.0, "flops": 0.0}
    make = GramMaker.__call__

    def timed(self, key, output):
        start = time.perf_counter()
        got = make(self, key, output)
        phase["seconds"] += time.perf_counter() - start
        phase["flops"] += 2.0 * len(output) ** 2 * output[0].numel()
        return got

    GramMaker.__call__ = timed
    net = model(arch, seed)
    x = images(n)
    layers = net.probe_layers("all")
    start = time.perf_counter()
    extract_to_store(
        net,
        x,
        np.zeros(n, np.int64),
        np.arange(n),
        path,
        layers,
        {},
        StoreLayout(chunk_rows=batch, cka_batch_size=batch),
        features=layers if features else [],
        pass_order=pass_orders(n, passes, 0),
        progress=False,
    )
    return {
        "seconds": time.perf_counter() - start,
        "gram_phase_seconds": phase["seconds"],
        "gram_phase_flops": phase["flops"],
    }


def _forward(arch, seed, n, batch, passes, threads):
    """The bare forward passes over the same batches (no hooks, nothing kept)."""
    from robrep.learn.data import pass_orders
    from robrep.similarity import pass_batches

    torch.set_num_threads(threads)
    net = model(arch, seed)
    x = torch.from_numpy(images(n))
    start = time.perf_counter()
    with torch.no_grad():
        for _, rows in pass_batches(pass_orders(n, passes, 0), batch):
            net(x[rows])
    return {"seconds": time.perf_counter() - start}


def _gram_phase(arch, batch, threads):
    """One batch's layer outputs in memory; time the stored Gram (syrk-style lower triangle)
    against a full X Xᵀ (sgemm) on the same shapes."""
    from robrep.similarity import GramMaker, upper_gram
    from robrep.store.extract import LayerRecorder

    torch.set_num_threads(threads)
    net = model(arch, 0)
    recorder = LayerRecorder(net, net.probe_layers("all"))
    outs = recorder.record(net, torch.from_numpy(images(batch)))
    flats = [o.reshape(batch, -1) for o in outs.values()]
    flops = sum(2.0 * batch * batch * f.shape[1] for f in flats)
    maker = GramMaker()  # extraction's own: offset blocks through a scratch, ssyrk, packing

    def make_gram(f):
        return maker(str(id(f)), f)  # one offset per layer, as in extraction

    timings = {}
    for name, fn in (
        ("sgemm", lambda f: f @ f.T),
        ("upper_gram", upper_gram),
        ("gram_maker", make_gram),
    ):
        for f in flats[:3]:
            fn(f)  # warm-up
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            for f in flats:
                fn(f)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return {"flops": flops, **timings, "layers": len(flats), "D": sum(f.shape[1] for f in flats)}


def _comparison(path_a, path_b, source, threads):
    """All-pairs minibatch CKA of two stores from their Gram statistics or their features."""
    from robrep.similarity import minibatch_cka_grams, minibatch_cka_multi
    from robrep.store.read import ActivationStore

    torch.set_num_threads(threads)
    a, b = ActivationStore(path_a), ActivationStore(path_b)
    pairs = [(0, 1), (0, 0), (1, 1)]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if source == "grams":
        res = minibatch_cka_grams([a.grams(), b.grams()], pairs, timings=timings)
    else:
        res = minibatch_cka_multi(
            [a.select(), b.select()],
            pairs,
            batch_size=a.cka_batch_size,
            pass_order=a.pass_order,
            timings=timings,
        )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cka": res[(0, 1)].cka.tolist(), **timings}


def _paper_pairs(path_a, path_b, batch, sample, threads):
    """The released code's per-pair work (both Grams and O(b³) traces per layer pair) on `sample`
    pairs of the first batch; returns seconds per pair and batch."""
    from bench_cka import _hsic1_trace

    from robrep.store.read import ActivationStore

    torch.set_num_threads(threads)
    a, b = ActivationStore(path_a), ActivationStore(path_b)
    rng = np.random.default_rng(0)
    la, lb = a.feature_layers, b.feature_layers
    picks = [(la[rng.integers(len(la))], lb[rng.integers(len(lb))]) for _ in range(sample)]
    start = time.perf_counter()
    for p, q in picks:
        xa = torch.from_numpy(np.asarray(a.layer(p)[:batch]))
        xb = torch.from_numpy(np.asarray(b.layer(q)[:batch]))
        k = xa @ xa.T
        l_ = xb @ xb.T
        k.fill_diagonal_(0)
        l_.fill_diagonal_(0)
        _hsic1_trace(k, l_), _hsic1_trace(k, k), _hsic1_trace(l_, l_)
    return {"seconds_per_pair_batch": (time.perf_counter() - start) / sample}


TASKS = {
    "extract": _extract,
    "forward": _forward,
    "gram_phase": _gram_phase,
    "comparison": _comparison,
    "paper_pairs": _paper_pairs,
}


def _measured(task, *args):
    """One task with its peak memory, measured in its own process (see isolated.run_isolated)."""
    import robrep.similarity  # noqa: F401  (imports count towards the baseline)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = TASKS[task](*args)
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["rss_growth"] = out["rss"] - baseline
    return out


def run(task, *args):
    return run_isolated(_measured, task, *args)


def du(path: Path) -> int:
    return int(
        subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="wrn-22-2")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=2, help="batches per pass (N = batches x b)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--paper-pairs", type=int, default=6, help="pairs timed for the paper's code"
    )
    parser.add_argument("--dir", type=Path, default=HERE / "data" / "gram")
    parser.add_argument("--quick", action="store_true", help="wrn-10-1, b = 64: a smoke run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from robrep.workers import short_spin_environment

    with warnings.catch_warnings():  # this process measures nothing; its children inherit it
        warnings.simplefilter("ignore")
        os.environ.update(short_spin_environment())  # as the extract rule runs
    if args.quick:
        args.arch, args.batch = "wrn-10-1", 64
    b, n, passes, threads = args.batch, args.batch * args.batches, args.passes, args.threads
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    stores = {k: args.dir / f"{k}.zarr" for k in ("grams0", "grams1", "features0", "features1")}

    from robrep.learn.cost import model_cost
    from robrep.pipeline.resources import store_size

    cost = model_cost(args.arch, 3, 32, 10, "all", None, "none")
    print(
        f"{args.arch}: {cost.probe_layers} probed layers ('all'), {cost.probe_values} values per "
        f"example; N = {n}, b = {b}, {passes} passes, {threads} threads"
    )

    r = {"forward": run("forward", args.arch, 0, n, b, passes, threads)}
    r["extract_grams"] = run(
        "extract", args.arch, 0, n, b, passes, stores["grams0"], False, threads
    )
    run("extract", args.arch, 1, n, b, passes, stores["grams1"], False, threads)
    r["extract_grams_2n"] = run(
        "extract", args.arch, 0, 2 * n, b, passes, args.dir / "grams_2n.zarr", False, threads
    )
    shutil.rmtree(args.dir / "grams_2n.zarr")
    r["extract_features"] = run(
        "extract", args.arch, 0, n, b, passes, stores["features0"], True, threads
    )
    run("extract", args.arch, 1, n, b, passes, stores["features1"], True, threads)
    r["gram_phase"] = run("gram_phase", args.arch, b, threads)
    r["gram_comparison"] = run("comparison", stores["grams0"], stores["grams1"], "grams", threads)
    r["feature_comparison"] = run(
        "comparison", stores["features0"], stores["features1"], "features", threads
    )
    r["paper_pairs"] = run(
        "paper_pairs", stores["features0"], stores["features1"], b, args.paper_pairs, threads
    )

    sizes = store_size(cost, n, b, passes)
    gram_disk = du(stores["grams0"] / "gram")
    feature_disk = du(stores["features0"]) - du(stores["features0"] / "gram")
    gp, ex = r["gram_phase"], r["extract_grams"]
    sgemm_rate = gp["flops"] / gp["sgemm"]
    pairs = 3 * cost.probe_layers**2  # a x b, a x a, b x b
    paper_seconds = r["paper_pairs"]["seconds_per_pair_batch"] * pairs * passes * args.batches
    diff = np.max(
        np.abs(np.array(r["gram_comparison"]["cka"]) - np.array(r["feature_comparison"]["cka"]))
    )
    paper = {}
    for arch in ("wrn-28-4", "wrn-28-10"):
        s = store_size(model_cost(arch, 3, 32, 10, "all", None, "none"), 10000, 1024, 3)
        paper[arch] = {
            "raw_gb": s.raw_float32_bytes / 1e9,
            "gram_gb": s.gram_bytes / 1e9,
            "ratio": s.raw_float32_bytes / s.gram_bytes,
        }
    summary = {
        "store_gram_bytes_uncompressed": sizes.gram_bytes,
        "store_gram_bytes_disk": gram_disk,
        "store_raw_float32_bytes": sizes.raw_float32_bytes,
        "store_features_bytes_disk": feature_disk,
        "bytes_ratio_uncompressed": sizes.raw_float32_bytes / sizes.gram_bytes,
        "bytes_ratio_disk": feature_disk / gram_disk,
        "paper_setting": paper,
        "extract_grams_s": r["extract_grams"]["seconds"],
        "forward_s": r["forward"]["seconds"],
        "extract_over_forward": r["extract_grams"]["seconds"] / r["forward"]["seconds"],
        "extract_features_s": r["extract_features"]["seconds"],
        "sgemm_gflops": sgemm_rate / 1e9,
        "syrk_effective_gflops": gp["flops"] / gp["upper_gram"] / 1e9,
        "syrk_over_sgemm": gp["sgemm"] / gp["upper_gram"],
        "gram_maker_effective_gflops": gp["flops"] / gp["gram_maker"] / 1e9,
        "gram_maker_over_sgemm": gp["sgemm"] / gp["gram_maker"],
        "gram_phase_in_extraction_s": ex["gram_phase_seconds"],
        "gram_phase_in_extraction_gflops": ex["gram_phase_flops"] / ex["gram_phase_seconds"] / 1e9,
        "gram_phase_in_extraction_over_sgemm": ex["gram_phase_flops"]
        / ex["gram_phase_seconds"]
        / sgemm_rate,
        "compare_grams_s": r["gram_comparison"]["seconds"],
        "compare_features_s": r["feature_comparison"]["seconds"],
        "compare_paper_s_scaled": paper_seconds,
        "features_over_grams": r["feature_comparison"]["seconds"] / r["gram_comparison"]["seconds"],
        "paper_over_grams": paper_seconds / r["gram_comparison"]["seconds"],
        "max_abs_cka_difference": float(diff),
        "extract_rss_n_mb": r["extract_grams"]["rss"] / MB,
        "extract_rss_2n_mb": r["extract_grams_2n"]["rss"] / MB,
        "extract_rss_2n_over_n": r["extract_grams_2n"]["rss"] / r["extract_grams"]["rss"],
        "compare_grams_rss_mb": r["gram_comparison"]["rss"] / MB,
        "compare_features_rss_mb": r["feature_comparison"]["rss"] / MB,
    }
    for key, value in summary.items():
        print(f"{key:36s} {value if isinstance(value, dict) else format(value, '.4g')}")
    record.write("bench_gram", args, {"summary": summary, "raw": r}, args.threads)


if __name__ == "__main__":
    main()
