"""AutoAttack beside PGD: the reference implementation runs on robrep models, respects the budget,
and is never weaker than PGD on a model where both find the optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robrep.learn.robustness import autoattack, evaluate_robustness
from robrep.study.summary import gradient_masking

EVALUATION = {"norm": "linf", "eps": 0.05, "steps": 10}


QUADRANTS = [
    (slice(0, 4), slice(0, 4)),
    (slice(0, 4), slice(4, 8)),
    (slice(4, 8), slice(0, 4)),
    (slice(4, 8), slice(4, 8)),
]


def linear_model() -> nn.Module:
    """Class k when quadrant k of an 8x8 image is the brightest on average."""
    weight = torch.zeros(4, 1, 8, 8)
    for k, (rows, cols) in enumerate(QUADRANTS):
        weight[k, :, rows, cols] = 1.0 / 16
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight.copy_(weight.reshape(4, 64))
        model[1].bias.zero_()
    return model.eval()


def images(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.3, 0.7, (n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, n)
    shift = rng.uniform(0.0, 0.2, n).astype(np.float32)  # margins of 0 to about 0.2
    for i, k in enumerate(y):
        rows, cols = QUADRANTS[k]
        x[i, :, rows, cols] += shift[i]
    return x, y


@pytest.mark.slow
def test_autoattack_is_at_most_pgd_at_most_clean():
    x, y = images()
    got = evaluate_robustness(
        linear_model(), x, y, EVALUATION, ["apgd-ce", "apgd-t"], 0, torch.device("cpu"), 32
    )
    assert got["n_examples"] == 60
    assert got["autoattack_acc"] <= got["pgd_acc"] <= got["clean_acc"]
    assert got["clean_acc"] > got["pgd_acc"] > 0  # some margins exceed eps, some do not
    assert got["largest_perturbation"] <= 0.05 + 1e-6
    assert got["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"]
    again = evaluate_robustness(
        linear_model(), x, y, EVALUATION, ["apgd-ce", "apgd-t"], 0, torch.device("cpu"), 32
    )
    assert again["autoattack_acc"] == got["autoattack_acc"]  # reproducible from the seed


def test_autoattack_versions_and_attack_names():
    model = linear_model()
    assert autoattack(model, "linf", 0.1, "standard", 0, "cpu").attacks_to_run == [
        "apgd-ce",
        "apgd-t",
        "fab-t",
        "square",
    ]
    custom = autoattack(model, "l2", 0.5, ["square"], 0, "cpu")
    assert custom.attacks_to_run == ["square"] and custom.square.n_queries == 5000
    with pytest.raises(ValueError, match="unknown AutoAttack attacks \\['pgd'\\]; valid: apgd-ce"):
        autoattack(model, "linf", 0.1, ["pgd"], 0, "cpu")
    with pytest.raises(ValueError, match="unknown AutoAttack version 'strong'; valid: standard"):
        autoattack(model, "linf", 0.1, "strong", 0, "cpu")
    with pytest.raises(ValueError, match=r"\['apgd-t'\] need at least 3 classes, the model has 2"):
        autoattack(model, "linf", 0.1, ["apgd-ce", "apgd-t"], 0, "cpu", n_classes=2)
    few = autoattack(model, "linf", 0.1, "standard", 0, "cpu", n_classes=4)
    assert few.apgd_targeted.n_target_classes == 3 and few.fab.n_target_classes == 3


def test_gradient_masking_flag():
    assert gradient_masking(0.6, 0.4, 0.1) and not gradient_masking(0.6, 0.55, 0.1)
    assert not gradient_masking(0.56, 0.46, 0.1)  # 10 of 100 examples: exactly the gap
