"""One case of the paper's shape on one device: training step rate fp32 vs bf16 autocast,
extraction with Grams vs the bare forward pass, minibatch CKA vs reading both stores' Grams, and
the GPU memory model (`learn.cost.gpu_memory`) against what a pass really holds (issue 23).

Full case: WRN-28-4 on 32 x 32 RGB, every layer (`layers: all`), CKA batch 1024, N = 2048 in
2 passes. `--quick` is a smoke run (WRN-10-1, 16 px, b = 64, N = 256). On CUDA the memory is
`torch.cuda.max_memory_allocated` of an attack pass (forward + backward to the input); on the
CPU it is the bytes autograd saves for the backward (`saved_tensors_hooks`), the part the model
estimates per example. bf16 is the autocast training step of `training.precision: bf16`.

    .venv/bin/python benchmarks/bench_gpu.py --device cuda     # on a GPU machine
    .venv/bin/python benchmarks/bench_gpu.py --quick           # CPU smoke run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robrep.learn.cost import MB, gpu_memory, model_cost, saved_bytes_per_example
from robrep.learn.models import build_model
from robrep.runtime import pick_device
from robrep.store.extract import extract_to_store
from robrep.store.format import StoreLayout
from robrep.store.read import ActivationStore
from robrep.study.compare import compare_stores

import record


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work) -> float:
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def train_rate(model, x, y, device, steps: int, bf16: bool) -> float:
    """Images per second of SGD steps (forward, backward, update) at the batch of `x`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (cudnn autotuning, allocator)
    return steps * len(x) / timed(device, lambda: [step() for _ in range(steps)])


def attack_pass_bytes(model, x, device) -> float:
    """What one attack pass holds per example: peak allocated on CUDA, saved tensors on the CPU."""
    model.eval()
    x = x.clone().requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long, device=device)).backward()
        return (torch.cuda.max_memory_allocated(device) - base) / len(x)
    return saved_bytes_per_example(model, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wrn-28-4")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--cka-batch", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.arch, args.size, args.n, args.cka_batch = "wrn-10-1", 16, 256, 64
        args.train_batch, args.steps = 32, 3
    device = pick_device(args.device)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = build_model(args.arch, 3, 10, [0.5] * 3, [0.25] * 3).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.train_batch, 3, args.size, args.size, generator=gen).to(device)
    y = torch.randint(0, 10, (args.train_batch,), generator=gen).to(device)
    figures: dict = {"device": str(device), "arch": args.arch}

    fp32 = train_rate(model, x, y, device, args.steps, bf16=False)
    bf16 = train_rate(model, x, y, device, args.steps, bf16=True)
    figures["train_images_per_s"] = {"fp32": fp32, "bf16_autocast": bf16, "ratio": bf16 / fp32}

    cost = model_cost(args.arch, 3, args.size, 10)
    rows = min(args.train_batch, 32)
    measured = attack_pass_bytes(model, x[:rows], device) / MB
    estimate = gpu_memory(cost, "attack").per_example
    figures["attack_pass_mb_per_example"] = {
        "measured": measured,
        "estimate": estimate,
        "estimate_over_measured": estimate / measured,
    }

    model.eval()
    images = np.random.default_rng(0).random((args.n, 3, args.size, args.size), np.float32)
    layers = model.probe_layers("all")
    order = np.stack([np.random.default_rng(p).permutation(args.n) for p in range(args.passes)])
    tmp = Path(tempfile.mkdtemp())
    try:

        def bare():
            with torch.no_grad():
                for p in range(args.passes):
                    for s in range(0, args.n, args.cka_batch):
                        model(torch.from_numpy(images[order[p, s : s + args.cka_batch]]).to(device))

        def store(name: str):
            return lambda: extract_to_store(
                model,
                images,
                np.arange(args.n) % 10,
                np.arange(args.n),
                tmp / name,
                layers,
                {  # what a comparison reads of its stores
                    "model_id": f"{args.arch}.standard.seed0",
                    "dataset": "synthetic",
                    "arch": args.arch,
                    "method_id": "standard",
                    "method": {"method": "standard", "id": "standard", "norm": None, "eps": 0.0},
                    "seed": 0,
                    "checkpoint": "final",
                    "epoch": 0,
                    "inputs": "benign",
                },
                StoreLayout(chunk_rows=args.cka_batch, cka_batch_size=args.cka_batch),
                features=[],
                pass_order=order,
                device=device,
                progress=False,
            )

        forward = timed(device, bare)
        extract = timed(device, store("a.zarr"))
        store("b.zarr")()
        figures["extract_s"] = {"bare_forward": forward, "with_grams": extract}
        figures["extract_s"]["ratio"] = extract / forward

        def read_grams():
            for name in ("a.zarr", "b.zarr"):
                grams = ActivationStore(tmp / name).grams()
                out = np.empty(grams.array.shape[1] * len(grams.names), np.float32)
                for t in range(len(grams.batch_sizes)):
                    grams.read(t, out)

        read = timed(device, read_grams)
        cka = timed(
            device,
            lambda: compare_stores(
                tmp / "a.zarr", tmp / "b.zarr", ["minibatch_cka"], 0, attrs={}, device=device
            ),
        )
        figures["minibatch_cka_s"] = {"read_grams": read, "compare": cka, "ratio": cka / read}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    t = figures["train_images_per_s"]
    print(f"{args.arch} on {device}, {len(layers)} layers, N = {args.n}, b = {args.cka_batch}")
    print(
        f"training: fp32 {t['fp32']:.0f} img/s, bf16 autocast {t['bf16_autocast']:.0f} img/s "
        f"({t['ratio']:.2f}x)"
    )
    m = figures["attack_pass_mb_per_example"]
    print(
        f"attack pass per example: measured {m['measured']:.2f} MB, model {m['estimate']:.2f} "
        f"MB ({m['estimate_over_measured']:.2f}x)"
    )
    e = figures["extract_s"]
    print(
        f"extraction: bare forward {e['bare_forward']:.2f} s, with Grams {e['with_grams']:.2f} s "
        f"({e['ratio']:.2f}x)"
    )
    c = figures["minibatch_cka_s"]
    print(
        f"minibatch CKA: reading the Grams {c['read_grams']:.2f} s, comparison {c['compare']:.2f}"
        f" s ({c['ratio']:.2f}x)"
    )
    record.write("bench_gpu", args, figures, threads)


if __name__ == "__main__":
    main()
