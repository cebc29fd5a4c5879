"""The GPU memory model and microbatches: the estimate bounds what autograd really keeps, a budget
gives the largest microbatch that fits, and the microbatch never changes a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robrep.learn.adversarial import craft
from robrep.learn.attacks import AttackSpec
from robrep.learn.cost import (
    GPU_RESERVED_MB,
    MB,
    GpuMemoryError,
    check_fits,
    gpu_memory,
    job_microbatch,
    microbatch_rows,
    model_cost,
    saved_bytes_per_example,
)
from robrep.learn.models import build_model
from robrep.learn.training import epoch_generator, evaluate

from helpers.stores import images

SPEC = AttackSpec("linf", 0.1, 3, 0.05)
L2_SPEC = AttackSpec("l2", 0.5, 2, 0.3)
LABELS = np.arange(40) % 10


def autograd_bytes(arch: str, channels: int, size: int, rows: int = 4) -> float:
    """Bytes autograd saves for the backward of one forward pass, per example (the tensors a
    PGD step or a training step keeps on the device)."""
    torch.manual_seed(0)
    model = build_model(arch, channels, 10, [0.5] * channels, [0.5] * channels).eval()
    x = torch.rand(rows, channels, size, size, requires_grad=True)
    return saved_bytes_per_example(model, x)


@pytest.mark.parametrize("arch, channels, size", [("convnet", 1, 8), ("wrn-10-1", 3, 16)])
def test_backward_estimate_bounds_what_autograd_saves(arch, channels, size):
    measured = autograd_bytes(arch, channels, size)
    estimate = gpu_memory(model_cost(arch, channels, size, 10), "attack").per_example * MB
    # At least what autograd keeps, with room for the gradients in flight; not wildly above.
    assert measured <= estimate <= 4 * measured, (measured, estimate)


def test_stages_differ_as_their_work_does():
    cost = model_cost("wrn-10-1", 3, 16, 10)
    train, attack, forward = (gpu_memory(cost, s) for s in ("train", "attack", "forward"))
    extract = gpu_memory(cost, "extract", 256)
    weights = cost.params * 4 / MB
    assert attack.fixed == pytest.approx(GPU_RESERVED_MB + weights)
    assert train.fixed == pytest.approx(GPU_RESERVED_MB + 4 * weights)  # gradients, momentum
    assert train.per_example == attack.per_example > forward.per_example > 0
    assert extract.fixed > forward.fixed and extract.per_example == forward.per_example
    assert attack.at(10) == int(np.ceil(attack.fixed + 10 * attack.per_example))
    with pytest.raises(ValueError, match="unknown GPU stage 'backward'; stages: train, attack"):
        gpu_memory(cost, "backward")


def test_budget_gives_the_largest_microbatch_that_fits():
    cost = model_cost("wrn-10-1", 3, 16, 10)
    memory = gpu_memory(cost, "attack")
    assert microbatch_rows(memory, 512, None, "x") == 512  # no budget (CPU): the whole batch
    budget = memory.fixed + 100.5 * memory.per_example
    rows = microbatch_rows(memory, 512, budget, "x")
    needs = lambda r: memory.fixed + r * memory.per_example  # noqa: E731
    assert rows == 100 and needs(rows) <= budget < needs(rows + 1)
    assert microbatch_rows(memory, 64, budget, "x") == 64  # never more than the batch
    assert job_microbatch(cost, "attack", 512, budget) == 100
    assert job_microbatch(cost, "attack", 512, None) == 512
    with pytest.raises(GpuMemoryError, match=r"needs \d+ MB .* budget is 1000 MB.*gpu_mem_mb"):
        job_microbatch(cost, "attack", 512, 1000)


def test_a_pass_that_cannot_be_split_is_refused_naming_its_setting():
    memory = gpu_memory(model_cost("wrn-10-1", 3, 16, 10), "train")
    check_fits(memory, 128, None, "training.batch_size")  # no budget: nothing to check
    check_fits(memory, 128, memory.at(128), "training.batch_size")
    with pytest.raises(GpuMemoryError, match="train pass of 128 examples .* training.batch_size"):
        check_fits(memory, 128, memory.at(127), "training.batch_size")


def test_adversarial_examples_do_not_depend_on_the_microbatch(tiny_model):
    """Linf steps are signs: identical images. L2 steps use the gradient's values, which a
    convolution sums in an order that depends on its batch: equal to float32 rounding."""
    x = images(40)
    for spec, tolerance in ((SPEC, 0.0), (L2_SPEC, 1e-6)):
        whole = craft(tiny_model, x, LABELS, spec, 3, 16, progress=False)
        for rows in (1, 5, 7):
            split = craft(tiny_model, x, LABELS, spec, 3, 16, progress=False, microbatch=rows)
            np.testing.assert_allclose(split, whole, rtol=0, atol=tolerance)


def test_accuracies_do_not_depend_on_the_microbatch(tiny_model):
    x, y = images(40), LABELS
    runs = [
        evaluate(tiny_model, x, y, SPEC, torch.device("cpu"), 16, epoch_generator(0, 1, 1), m)
        for m in (None, 3, 16)
    ]
    assert runs[0] == runs[1] == runs[2]
