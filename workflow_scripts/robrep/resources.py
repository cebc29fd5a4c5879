"""Job resources derived from the config: data size, architecture cost, epochs and attack steps.

A cluster scheduler needs memory and runtime up front. These estimates come from what a job will
do: the dataset's size on disk, the model's parameters, FLOPs and activation volume per image
(counted once per architecture and input shape on meta tensors), the number of epochs and
attack steps, and a sustained throughput `gflops` that describes the machine (config
`resources.gflops`). Retries multiply them by the attempt number.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .data import DATASET_INFO, input_geometry
from .models import build_model

MB = 2**20


@dataclass(frozen=True)
class DatasetGeometry:
    examples: int
    channels: int
    size: int
    bytes_per_value: int
    classes: int

    @property
    def megabytes(self) -> float:
        return self.examples * self.channels * self.size**2 * self.bytes_per_value / MB


def dataset_geometry(name: str, options: dict) -> DatasetGeometry:
    """Examples, channels, image size and storage type of a configured dataset."""
    info = DATASET_INFO[name]
    channels, size = input_geometry(name, options)
    return DatasetGeometry(info.examples, channels, size, info.pixel_bytes, info.classes)


@dataclass(frozen=True)
class ModelCost:
    params: int
    flops_per_image: float  # forward pass
    activation_values_per_image: int  # every module's output, what backward keeps
    probe_layers: int
    widest_probe: int  # largest flattened probe layer as stored (after pooling)
    probe_values: int  # values stored per example over all probe layers (after pooling)


def pooled_size(shape: tuple[int, ...], pool: int | None) -> int:
    """Values of one example's layer output as stored: feature maps larger than pool x pool are
    average-pooled to pool x pool (see `activation_store.LayerRecorder`)."""
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
) -> ModelCost:
    """Parameters, forward FLOPs and activation volume of one image (meta tensors: no compute).

    `layers` and `pool` are the store's (config `activations`): they decide what is stored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(arch, channels, classes, [0.5] * channels, [0.5] * channels).eval()
    outputs: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, o, n=name: outputs.__setitem__(n, o.numel()))
        for name, m in model.named_modules()
        if name and not list(m.children())
    ]
    probes = model.probe_layers(layers if isinstance(layers, str) else list(layers))
    probe_sizes: dict[str, int] = {}
    modules = dict(model.named_modules())
    hooks += [
        modules[n].register_forward_hook(
            lambda m, a, o, n=n: probe_sizes.__setitem__(n, pooled_size(tuple(o.shape[1:]), pool))
        )
        for n in probes
    ]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return ModelCost(
        params=sum(p.numel() for p in model.parameters()),
        flops_per_image=float(counter.get_total_flops()),
        activation_values_per_image=sum(outputs.values()),
        probe_layers=len(probes),
        widest_probe=max(probe_sizes.values()),
        probe_values=sum(probe_sizes.values()),
    )


def train_resources(
    geometry: DatasetGeometry,
    cost: ModelCost,
    epochs: int,
    batch_size: int,
    attack_steps: int,
    eval_steps: int,
    gflops: float,
    val_fraction: float,
) -> dict[str, int]:
    """mem_mb and runtime (minutes) of one training job."""
    mem = (
        1500
        + 2 * geometry.megabytes
        + 16 * cost.params * 4 / MB  # weights, grads, momentum, saved states
        + 3 * batch_size * cost.activation_values_per_image * 4 / MB
    )
    n_train = geometry.examples * (1 - val_fraction)
    train_flops = 3 * cost.flops_per_image * n_train * (1 + attack_steps)  # fwd + bwd per pass
    val_flops = 3 * cost.flops_per_image * geometry.examples * val_fraction * (1 + eval_steps)
    seconds = epochs * (train_flops + val_flops) / (gflops * 1e9)
    return {"mem_mb": int(math.ceil(mem)), "runtime": int(10 + math.ceil(2 * seconds / 60))}


def extract_resources(
    geometry: DatasetGeometry,
    cost: ModelCost,
    n_examples: int,
    batch_size: int,
    attack_steps: int,
    gflops: float,
    value_bytes: int = 4,
) -> dict[str, int]:
    """mem_mb, runtime (minutes) and disk_mb (the store, uncompressed) of one extraction job
    (attack_steps = 0 for benign; value_bytes from `activations.dtype`)."""
    mem = (
        1500
        + geometry.megabytes
        + 4 * cost.params * 4 / MB
        + (2 if attack_steps else 1) * batch_size * cost.activation_values_per_image * 4 / MB
    )
    seconds = n_examples * cost.flops_per_image * (1 + 3 * attack_steps) / (gflops * 1e9)
    disk = n_examples * cost.probe_values * value_bytes / MB
    return {
        "mem_mb": int(math.ceil(mem)),
        "runtime": int(5 + math.ceil(2 * seconds / 60)),
        "disk_mb": int(math.ceil(10 + disk)),
    }


def similarity_resources(
    cost_a: ModelCost,
    cost_b: ModelCost,
    n_examples: int,
    batch_size: int,
    full_data: bool,
    gflops: float,
) -> dict[str, int]:
    """mem_mb and runtime (minutes) of one comparison of two stores."""
    layers = cost_a.probe_layers + cost_b.probe_layers
    widest = max(cost_a.widest_probe, cost_b.widest_probe)
    mem = 1500 + (2 * batch_size * widest * 4 + layers * batch_size**2 * 8 * 2) / MB
    flops = 2 * batch_size * n_examples * widest * layers
    if full_data:
        mem += layers * n_examples**2 * 8 * 3 / MB  # Gram, eigenvectors, a centred copy
        flops += layers * (2 * n_examples**2 * widest + 10 * n_examples**3)
    seconds = flops / (gflops * 1e9)
    return {"mem_mb": int(math.ceil(mem)), "runtime": int(5 + math.ceil(2 * seconds / 60))}
