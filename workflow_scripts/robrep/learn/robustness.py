"""Robust accuracy under AutoAttack beside the evaluation PGD, on one fixed subset of the test split.

AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks") is what the robustness community reports (RobustBench); robrep
runs the reference implementation (`pyautoattack`, pinned) and, on the same examples, the
evaluation PGD attack and clean accuracy, so the three numbers are comparable. A robust model whose
AutoAttack accuracy is far below its PGD accuracy is the classic sign of gradient masking
(Athalye et al. 2018): flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a function needs it: the config reads the attack names
    import torch
    from torch import nn

from robrep.learn.attacks import AttackSpec
from robrep.learn.data import to_float

# AutoAttack's attacks (pyautoattack's names) and versions.
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
VERSIONS = {  # pyautoattack's versions and the attacks each runs
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
NORMS = {"linf": "Linf", "l2": "L2"}


def autoattack(
    model: nn.Module,
    norm: str,
    eps: float,
    version: str | Sequence[str],
    seed: int,
    device: torch.device | str,
    n_classes: int = 10,
) -> Any:
    """A pyautoattack `AutoAttack` for `model` (inputs in [0, 1]). `version` is standard, plus or
    rand, or a list of attacks run with the standard version's settings (1 restart of APGD-CE,
    9 target classes for APGD-T and FAB-T, 5000 Square queries). Targeted attacks aim at the
    `n_classes` - 1 other classes when there are fewer than 10; their DLR loss needs 3 classes."""
    from pyautoattack import AutoAttack

    if isinstance(version, str) and version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(VERSIONS)}")
    if not isinstance(version, str):
        unknown = [a for a in version if a not in ATTACKS]
        if unknown or not version:
            raise ValueError(f"unknown AutoAttack attacks {unknown}; valid: {', '.join(ATTACKS)}")
    base = version if isinstance(version, str) else "standard"
    attack = AutoAttack(model, norm=NORMS[norm], eps=eps, version=base, seed=seed, device=device)
    if not isinstance(version, str):
        attack.attacks_to_run = list(version)
    needs_three = [a for a in attack.attacks_to_run if a in ("apgd-t", "apgd-dlr", "fab-t")]
    if n_classes < 3 and needs_three:
        raise ValueError(
            f"AutoAttack's {needs_three} need at least 3 classes, the model has {n_classes}; "
            f"use evaluation.autoattack.version: [apgd-ce, square]"
        )
    targets = min(9, n_classes - 1)
    attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, targets)
    attack.fab.n_target_classes = min(attack.fab.n_target_classes, targets)
    return attack


def evaluate_robustness(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    evaluation: Mapping[str, Any],
    version: str | Sequence[str],
    seed: int,
    device: torch.device,
    batch_size: int = 250,
    microbatch: int | None = None,
) -> dict[str, Any]:
    """Clean, evaluation-PGD and AutoAttack accuracy of `model` on images `x` (in [0, 1]) with
    labels `y`, and the largest perturbation AutoAttack used (checked against the budget).

    `batch_size` is AutoAttack's batch and the PGD's attack batch; the PGD and clean passes run
    `microbatch` rows at a time on the device (no change to the numbers). AutoAttack's batch is
    not split: pyautoattack seeds its random starts per batch, so its batch defines its result."""
    import torch

    from robrep.learn.training import evaluate

    model.eval()
    spec = AttackSpec.from_evaluation(evaluation)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = to_float(x), torch.as_tensor(y)
    clean_acc, pgd_acc = evaluate(model, x, y, spec, device, batch_size, generator, microbatch)
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)
    with torch.no_grad():
        n_classes = int(model(xs[:1].to(device)).shape[1])
    attack = autoattack(model, spec.norm, spec.eps, version, seed, device, n_classes)
    x_adv, _ = attack.run_standard_evaluation(xs, ys, batch_size=batch_size)
    with torch.no_grad():
        correct = sum(
            int(
                (
                    model(x_adv[s : s + batch_size].to(device)).argmax(1)
                    == ys[s : s + batch_size].to(device)
                ).sum()
            )
            for s in range(0, len(ys), batch_size)
        )
    delta = (x_adv - xs).reshape(len(ys), -1)
    size = delta.abs().amax(1) if spec.norm == "linf" else delta.norm(dim=1)
    largest = float(size.max()) if len(ys) else 0.0
    if largest > spec.eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(
            f"AutoAttack returned a perturbation of {spec.norm} size {largest:.6g} > eps {spec.eps}"
        )
    n = len(ys)
    return {
        "n_examples": n,
        "clean_acc": clean_acc,
        "pgd_acc": pgd_acc,
        "autoattack_acc": correct / n,
        "largest_perturbation": largest,
        "pgd_attack": spec.as_dict(),
        "autoattack": {
            "version": version if isinstance(version, str) else list(version),
            "attacks": list(attack.attacks_to_run),
            "norm": spec.norm,
            "eps": spec.eps,
            "seed": seed,
            "implementation": "pyautoattack",
        },
    }
