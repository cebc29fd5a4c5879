"""Job resources derived from the config: data size, architecture cost, epochs and attack steps.

A cluster scheduler needs memory and runtime up front. These estimates come from what a job will
do: the dataset's size on disk, the model's parameters, FLOPs and activation volume per image
(counted once per architecture and input shape on meta tensors), the number of epochs and
attack steps, and the sustained rates of where the work runs (config `resources.gflops` for the
device that runs the networks, `resources.cpu_gflops` for numpy work on a job's CPU cores).
Host memory (`mem_mb`) holds what a job keeps on the host; with `on_gpu` the activations of its
passes live on the GPU and are estimated there (`gpu_mem_mb`, `learn.cost.gpu_memory`). Retries
multiply them by the attempt number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from robrep.learn.cost import GPU_RESERVED_MB, MB, ModelCost, gpu_memory
from robrep.learn.data import DATASET_INFO, input_geometry
from robrep.similarity.measures import GRAM_MEASURES
from robrep.similarity.result import MINIBATCH_CKA


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
class StoreSize:
    """Bytes of one activation store (uncompressed) and of the float32 raw features it replaces."""

    feature_bytes: int  # raw (pooled) features of the feature layers, in the store's dtype
    gram_bytes: int  # Gram triangles of every probed layer, every batch of every pass (float32)
    raw_float32_bytes: int  # float32 unpooled features of every probed layer (what Grams replace)

    @property
    def total(self) -> int:
        return self.feature_bytes + self.gram_bytes


def store_size(
    cost: ModelCost, n_examples: int, cka_batch_size: int, passes: int, value_bytes: int = 4
) -> StoreSize:
    """What a store holds: features of the feature layers plus one packed Gram per probed layer,
    batch and pass (its size does not depend on the layer's width; a shorter last batch fills part
    of a full-size chunk)."""
    batches = math.ceil(n_examples / cka_batch_size)
    triangles = batches * cka_batch_size * (cka_batch_size + 1) // 2
    return StoreSize(
        feature_bytes=n_examples * cost.feature_values * value_bytes,
        gram_bytes=passes * triangles * cost.probe_layers * 4,
        raw_float32_bytes=n_examples * cost.probe_values * 4,
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
    on_gpu: bool = False,
) -> dict[str, int]:
    """mem_mb and runtime (minutes) of one training job, and with `on_gpu` its gpu_mem_mb (a
    training step at `batch_size`: it is not split)."""
    mem = (
        1500
        + 2 * geometry.megabytes
        + 16 * cost.params * 4 / MB  # weights, grads, momentum, saved states
    )
    if not on_gpu:
        mem += 3 * batch_size * cost.activation_values_per_image * 4 / MB
    n_train = geometry.examples * (1 - val_fraction)
    train_flops = 3 * cost.flops_per_image * n_train * (1 + attack_steps)  # fwd + bwd per pass
    val_flops = 3 * cost.flops_per_image * geometry.examples * val_fraction * (1 + eval_steps)
    seconds = epochs * (train_flops + val_flops) / (gflops * 1e9)
    out = {"mem_mb": int(math.ceil(mem)), "runtime": int(10 + math.ceil(2 * seconds / 60))}
    return out | _on_gpu(on_gpu, gpu_memory(cost, "train").at(batch_size))


def _on_gpu(on_gpu: bool, gpu_mem_mb: int) -> dict[str, int]:
    """The GPU part of a job's request: one GPU and the memory of its largest pass."""
    return {"gpu": 1, "gpu_mem_mb": gpu_mem_mb} if on_gpu else {}


def extract_resources(
    geometry: DatasetGeometry,
    cost: ModelCost,
    n_examples: int,
    adversarial: bool,
    gflops: float,
    value_bytes: int = 4,
    cka_batch_size: int = 100,
    passes: int = 1,
    on_gpu: bool = False,
    keeps_outputs: bool = False,
) -> dict[str, int]:
    """mem_mb, runtime (minutes) and disk_mb (the store, uncompressed) of one extraction job
    (`adversarial`: it reads stored adversarial examples; value_bytes from `activations.dtype`),
    and with `on_gpu` its gpu_mem_mb (a whole CKA batch: its Grams need every row at once).

    Work: a forward pass per batch of every pass, and per batch and probed layer a symmetric Gram
    product (about b² D multiply-adds). Memory: the model, a forward batch (on the host unless
    `on_gpu`), the adversarial examples, and two batches of Grams and features in flight."""
    b = cka_batch_size
    images = n_examples * geometry.channels * geometry.size**2 * 4 if adversarial else 0
    mem = (
        1500
        + geometry.megabytes
        + 4 * cost.params * 4 / MB
        + images / MB
        + 2 * (cost.probe_layers * b * (b + 1) / 2 * 4 + b * cost.feature_values * 4) / MB
    )
    if not on_gpu:
        mem += b * cost.activation_values_per_image * 4 / MB
    flops = n_examples * cost.flops_per_image * passes
    flops += passes * n_examples * b * cost.probe_values  # b² D per batch and layer
    seconds = flops / (gflops * 1e9)
    size = store_size(cost, n_examples, b, passes, value_bytes)
    return {
        "mem_mb": int(math.ceil(mem)),
        "runtime": int(5 + math.ceil(2 * seconds / 60)),
        "disk_mb": int(math.ceil(10 + size.total / MB)),
    } | _on_gpu(on_gpu, gpu_memory(cost, "extract", b, keeps_outputs).at(b))


def attack_resources(
    geometry: DatasetGeometry,
    cost: ModelCost,
    n_examples: int,
    batch_size: int,
    steps: int,
    gflops: float,
    on_gpu: bool = False,
) -> dict[str, int]:
    """mem_mb, runtime (minutes) and disk_mb of crafting one checkpoint's adversarial examples:
    PGD-`steps` (a forward and a backward per step) on `n_examples`, `batch_size` at a time.
    Memory: the model, the clean and adversarial images, and a batch's forward and backward: on
    the host, or with `on_gpu` on the GPU, where a batch runs in microbatches that fit
    (gpu_mem_mb: one example's pass, the least the job can run with)."""
    images = n_examples * geometry.channels * geometry.size**2 * 4
    mem = 1500 + geometry.megabytes + 4 * cost.params * 4 / MB + 2 * images / MB
    if not on_gpu:
        mem += 2 * batch_size * cost.activation_values_per_image * 4 / MB
    seconds = n_examples * cost.flops_per_image * (3 * steps + 1) / (gflops * 1e9)
    return {
        "mem_mb": int(math.ceil(mem)),
        "runtime": int(5 + math.ceil(2 * seconds / 60)),
        "disk_mb": int(math.ceil(10 + images / MB)),
    } | _on_gpu(on_gpu, gpu_memory(cost, "attack").at(1))


def similarity_resources(
    cost_a: ModelCost,
    cost_b: ModelCost,
    n_examples: int,
    cka_batch_size: int,
    passes: int,
    full_data: bool,
    gflops: float,
    cpu_gflops: float | None = None,
    on_gpu: bool = False,
    measures: Sequence[str] = (MINIBATCH_CKA,),
    permutations: int = 0,
) -> dict[str, int]:
    """mem_mb and runtime (minutes) of one comparison of two stores: every minibatch measure
    from the packed Grams (per batch: each store's chunk, read into two alternating buffers; the
    measure's per-layer vectors, made on the host at `cpu_gflops`; one float64 product of the
    stacked vectors (CKNNA: two), at `gflops`, on the GPU
    with `on_gpu`, which then holds the float64 vectors: gpu_mem_mb), its permutation null
    (`permutations` draws of the a x b cross terms, and of side b's vectors where a draw cannot
    gather them) and, with `full_data`, N x N Grams and eigendecompositions of the feature
    layers (numpy float64 on the CPU, at `cpu_gflops`, default `gflops`)."""
    b = cka_batch_size
    cpu_gflops = cpu_gflops or gflops
    layers = cost_a.probe_layers + cost_b.probe_layers
    cross = cost_a.probe_layers * cost_b.probe_layers
    batches = passes * math.ceil(n_examples / b)
    chunks = 2 * layers * b * (b + 1) / 2  # two chunk buffers per store
    vectors = max(GRAM_MEASURES[m].rows(b) for m in measures) * layers * 8  # float64, a batch
    mem = 1500 + chunks * 4 / MB + 2 * vectors / MB  # the batch's vectors and the next one's
    seconds = 0.0
    for name in measures:
        measure = GRAM_MEASURES[name]
        rows = measure.rows(b)
        # a stacked product: (layers x rows)(rows x layers), multiply and add
        per_pair = 2 * rows * measure.products
        terms = layers**2 * per_pair
        made = 0 if measure.vectors is None else 50 * layers * rows  # host: distances, kernels
        # a null draw: the a x b cross terms of gathered vectors, or side b's vectors remade
        # (half of `made`) and all terms
        draws = cross * per_pair if measure.relabels else terms
        remade = 0 if measure.relabels else permutations * made / 2
        seconds += batches * (terms + permutations * draws) / (gflops * 1e9)
        seconds += batches * (made + remade) / (cpu_gflops * 1e9)
    if full_data:
        feature_layers = cost_a.feature_layers + cost_b.feature_layers
        widest = max(cost_a.widest_feature, cost_b.widest_feature)
        mem += feature_layers * n_examples**2 * 8 * 3 / MB  # Gram, eigenvectors, a centred copy
        cpu_flops = feature_layers * (2 * n_examples**2 * widest + 10 * n_examples**3)
        seconds += cpu_flops / (cpu_gflops * 1e9)
    out = {"mem_mb": int(math.ceil(mem)), "runtime": int(5 + math.ceil(2 * seconds / 60))}
    on_device = max(chunks * 8, 2 * vectors)
    return out | _on_gpu(on_gpu, int(math.ceil(GPU_RESERVED_MB + on_device / MB)))


def probe_resources(cost: ModelCost, n_examples: int, folds: int, gflops: float) -> dict[str, int]:
    """mem_mb and runtime (minutes) of the linear probes of one store: per feature layer, the
    N x N Gram of its features (read in blocks) and, per fold, an eigendecomposition of the
    training part's Gram (about 9 n³ flops) and a few n x n copies."""
    n = n_examples
    mem = 1500 + 6 * n * n * 8 / MB
    flops = cost.feature_layers * (2 * n * n * cost.widest_feature + folds * 10 * n**3)
    seconds = flops / (gflops * 1e9)
    return {"mem_mb": int(math.ceil(mem)), "runtime": int(5 + math.ceil(2 * seconds / 60))}


# Forward passes per example of each AutoAttack attack with the standard settings (backward
# passes count as two): APGD 100 iterations, targeted ones per target class, Square 5000 queries.
AUTOATTACK_PASSES = {
    "apgd-ce": 300,
    "apgd-dlr": 300,
    "apgd-t": 2700,
    "fab": 1500,
    "fab-t": 2700,
    "square": 5000,
}


def autoattack_resources(
    geometry: DatasetGeometry,
    cost: ModelCost,
    n_examples: int,
    attacks: str | tuple[str, ...],
    pgd_steps: int,
    batch_size: int,
    gflops: float,
    on_gpu: bool = False,
) -> dict[str, int]:
    """mem_mb and runtime (minutes) of one model's AutoAttack and PGD evaluation on `n_examples`:
    every attack on every example (an upper bound: AutoAttack only attacks what is still
    robust); with `on_gpu`, gpu_mem_mb of an attack pass at `batch_size` (AutoAttack's batch is
    not split: it seeds its random starts per batch)."""
    from robrep.learn.robustness import VERSIONS

    names = VERSIONS[attacks] if isinstance(attacks, str) else attacks
    passes = sum(AUTOATTACK_PASSES[a] for a in names) + 3 * pgd_steps + 1
    mem = (
        1500
        + geometry.megabytes
        + 4 * cost.params * 4 / MB
        + 3 * n_examples * geometry.channels * geometry.size**2 * 4 / MB
    )
    if not on_gpu:
        mem += 2 * batch_size * cost.activation_values_per_image * 4 / MB
    seconds = n_examples * cost.flops_per_image * passes / (gflops * 1e9)
    out = {"mem_mb": int(math.ceil(mem)), "runtime": int(5 + math.ceil(2 * seconds / 60))}
    return out | _on_gpu(on_gpu, gpu_memory(cost, "attack").at(batch_size))
