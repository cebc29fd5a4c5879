"""What a network costs per image, counted once on meta tensors (no compute), and the GPU memory
a stage of work on it needs: what sizes jobs (`robrep.pipeline.resources`) and what splits a GPU
stage's batch into microbatches that fit (`microbatch_rows`).

The GPU model (`gpu_memory`) is linear in the rows a pass holds: a fixed part (CUDA context and
allocator slack, weights, for training the gradients and optimizer state) plus bytes per example
(for a pass with a backward, the activations autograd saves and their gradients; for a no-grad
pass, the few largest layer outputs alive at once). `tests/test_cost.py` checks the per-example
part against the bytes autograd really saves (`torch.autograd.graph.saved_tensors_hooks`).
torch is imported by `model_cost` only, so that importing this module (the workflow does, to
size jobs) costs no torch start-up.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MB = 2**20
GPU_RESERVED_MB = 1024  # CUDA context, cuDNN workspace and allocator slack of one process
# Stages of GPU work (config: what each job runs): a training step (forward, backward, update),
# an attack step (forward, backward to the input), a no-grad forward (evaluation), and an
# extraction pass (no-grad forward with every probed layer's b x b Gram made on the device).
GPU_STAGES = ("train", "attack", "forward", "extract")


class GpuMemoryError(ValueError):
    """Not even one example of a stage fits the GPU memory budget; names the budget and the
    setting to change."""


@dataclass(frozen=True)
class ModelCost:
    params: int
    flops_per_image: float  # forward pass
    activation_values_per_image: int  # every module's output, what backward keeps
    largest_output_values: int  # the largest single module output (what a no-grad pass holds)
    probe_layers: int  # layers with Gram statistics
    probe_values: int  # values per example over the probed layers, unpooled (what Grams see)
    feature_layers: int  # layers that keep raw features
    widest_feature: int  # largest flattened feature layer as stored (after pooling)
    feature_values: int  # values stored per example over the feature layers (after pooling)


def pooled_size(shape: tuple[int, ...], pool: int | None) -> int:
    """Values of one example's layer output as stored: feature maps larger than pool x pool are
    average-pooled to pool x pool (see `store.extract.LayerRecorder`)."""
    if pool and len(shape) == 3 and max(shape[-2:]) > pool:
        return shape[0] * pool * pool
    return math.prod(shape)


@functools.cache
def model_cost(
    arch: str,
    channels: int,
    size: int,
    classes: int,
    layers: str | tuple[str, ...] = "blocks",
    pool: int | None = None,
    features: str | tuple[str, ...] | None = None,
) -> ModelCost:
    """Parameters, forward FLOPs and activation volume of one image (meta tensors: no compute).

    `layers`, `features` (default: `layers`; "none": no layer) and `pool` are the store's (config
    `activations`): they decide what is stored.
    """
    import torch  # here, not at import: the workflow sizes jobs from cached costs without it
    from torch.utils.flop_counter import FlopCounterMode

    from robrep.learn.models import LayerHooks, build_model

    with torch.device("meta"):
        model = build_model(arch, channels, classes, [0.5] * channels, [0.5] * channels).eval()
    outputs: Counter[str] = Counter()  # values each leaf module outputs, every call counted
    largest = [0]

    def count(name: str, output: torch.Tensor) -> None:
        outputs.update({name: output.numel()})
        largest[0] = max(largest[0], output.numel())

    hooks = [
        m.register_forward_hook(lambda m, a, o, n=name: count(n, o))
        for name, m in model.named_modules()
        if name and not list(m.children())
    ]
    probes = model.probe_layers(layers if isinstance(layers, str) else list(layers))
    features = layers if features is None else features
    kept = (
        []
        if features == "none"
        else model.probe_layers(features if isinstance(features, str) else list(features))
    )
    probe_shapes: dict[str, tuple[int, ...]] = {}
    probed = LayerHooks(
        model,
        list(dict.fromkeys([*probes, *kept])),
        lambda n, o: probe_shapes.__setitem__(n, tuple(o.shape[1:])),
    )
    probed.start()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, size, size, device="meta"))
    probed.remove()
    for h in hooks:
        h.remove()
    return ModelCost(
        params=sum(p.numel() for p in model.parameters()),
        flops_per_image=float(counter.get_total_flops()),
        activation_values_per_image=sum(outputs.values()),
        largest_output_values=largest[0],
        probe_layers=len(probes),
        probe_values=sum(math.prod(probe_shapes[n]) for n in probes),
        feature_layers=len(kept),
        widest_feature=max((pooled_size(probe_shapes[n], pool) for n in kept), default=0),
        feature_values=sum(pooled_size(probe_shapes[n], pool) for n in kept),
    )


@dataclass(frozen=True)
class GpuMemory:
    """GPU memory of one stage on one model: `fixed` MB plus `per_example` MB per row of a pass."""

    stage: str
    fixed: float
    per_example: float

    def at(self, rows: int) -> int:
        """MB for a pass of `rows` examples."""
        return int(math.ceil(self.fixed + rows * self.per_example))


def gpu_memory(
    cost: ModelCost, stage: str, gram_rows: int = 0, keeps_outputs: bool = False
) -> GpuMemory:
    """The GPU memory model of `stage` (one of GPU_STAGES) on a model of `cost`; `gram_rows` is
    the extraction batch (its b x b Grams, made per layer on the device, two alive at once);
    `keeps_outputs`: the extraction pass holds every probed output until it ends
    (`activations.compat: release`).

    float32 throughout. A backward keeps about every module's output (the activation volume)
    and, at its peak, as much again in gradients and recomputed buffers: 2x the volume per
    example. A no-grad pass holds a layer's input, its output and a residual branch: 3x the
    largest output."""
    if stage not in GPU_STAGES:
        raise ValueError(f"unknown GPU stage {stage!r}; stages: {', '.join(GPU_STAGES)}")
    weights = cost.params * 4 / MB
    backward = 2 * cost.activation_values_per_image * 4 / MB
    forward = 3 * cost.largest_output_values * 4 / MB
    if stage == "train":  # weights, gradients, momentum and the optimizer's scratch copy
        return GpuMemory(stage, GPU_RESERVED_MB + 4 * weights, backward)
    if stage == "attack":
        return GpuMemory(stage, GPU_RESERVED_MB + weights, backward)
    if stage == "forward":
        return GpuMemory(stage, GPU_RESERVED_MB + weights, forward)
    grams = 2 * gram_rows * gram_rows * 4 / MB
    kept = cost.probe_values * 4 / MB if keeps_outputs else 0.0
    return GpuMemory(stage, GPU_RESERVED_MB + weights + grams, forward + kept)


def microbatch_rows(memory: GpuMemory, batch: int, budget_mb: float | None, setting: str) -> int:
    """The rows of each microbatch a `batch` of `memory`'s stage is split into so that one pass
    fits `budget_mb` (None: no GPU budget, the whole batch). `GpuMemoryError` (naming the budget
    and `setting`) when not even one example fits."""
    if budget_mb is None:
        return batch
    rows = math.floor((budget_mb - memory.fixed) / memory.per_example)
    if rows < 1:
        raise GpuMemoryError(
            f"one example of a {memory.stage} pass needs {memory.at(1)} MB of GPU memory, the "
            f"budget is {budget_mb:.0f} MB; a GPU with more memory, a smaller model, or "
            f"{setting}"
        )
    return min(batch, rows)


def check_fits(memory: GpuMemory, rows: int, budget_mb: float | None, setting: str) -> None:
    """Refuse a pass of `rows` that cannot be split (a training step, an extraction batch) and
    does not fit `budget_mb` (None: no GPU budget), naming `setting`."""
    if budget_mb is not None and memory.at(rows) > budget_mb:
        raise GpuMemoryError(
            f"a {memory.stage} pass of {rows} examples needs about {memory.at(rows)} MB of GPU "
            f"memory, the budget is {budget_mb:.0f} MB; lower {setting} or use a larger GPU"
        )


def model_cost_of(meta: dict) -> ModelCost:
    """The cost of the model a weights file's metadata describes (`io.weights.read_metadata`)."""
    size = int(meta["image_size"][-1])
    return model_cost(meta["arch"], int(meta["in_channels"]), size, int(meta["num_classes"]))


def job_microbatch(cost: ModelCost, stage: str, batch: int, budget_mb: float | None) -> int:
    """The microbatch of a job's `stage` batch on a model of `cost` within `budget_mb`
    (`runtime.gpu_budget_mb`; None on the CPU: the whole batch)."""
    if budget_mb is None:
        return batch
    return microbatch_rows(gpu_memory(cost, stage), batch, budget_mb, "resources.gpu_mem_mb")


RESIDENT_SHARE = 0.25  # the most of a GPU budget a training split may take on the device


def resident_data_mb(data_bytes: int, budget_mb: float | None) -> float:
    """The GPU memory a training split of `data_bytes` takes when it lives on the device (it
    does when a GPU budget exists and it needs at most RESIDENT_SHARE of it: CIFAR-10's 150 MB
    of uint8 pixels on any GPU), else 0 (batches are copied from host memory)."""
    data_mb = data_bytes / MB
    if budget_mb is None or data_mb > RESIDENT_SHARE * budget_mb:
        return 0.0
    return data_mb


def saved_bytes_per_example(model: Any, x: Any) -> float:
    """Bytes autograd saves for the backward of one forward pass of `model` on the batch `x`
    (loss: the sum of its outputs), per example: what `gpu_memory`'s backward term estimates,
    measured on any device (`saved_tensors_hooks`; per-example tensors only, a storage saved by
    two ops counted once)."""
    import torch

    saved: dict[int, int] = {}  # storage -> bytes

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() and t.shape[0] == len(x):  # per-example tensors, not the weights
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(saved.values()) / len(x)
