"""PGD stays inside the threat model, keeps pixels valid and never touches batch-norm statistics."""

from __future__ import annotations

import pytest
import torch

from robrep.learn.attacks import AttackSpec, pgd

from helpers.reference import accuracy


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_bounds_and_valid_pixels(tiny_model, norm, eps):
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    adv = pgd(
        tiny_model, x, y, AttackSpec(norm, eps, 5, 2.5 * eps / 5), torch.Generator().manual_seed(0)
    )
    delta = (adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (size > 0).any()


def test_eps_zero_leaves_inputs_unchanged(tiny_model):
    x = torch.rand(4, 1, 8, 8)
    adv = pgd(tiny_model, x, torch.zeros(4, dtype=torch.long), AttackSpec("linf", 0.0, 5, 0.01))
    assert torch.equal(adv, x)


def test_robust_accuracy_not_above_clean(tiny_model):
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        y = tiny_model(x).argmax(1)  # clean accuracy 1 by construction
    adv = pgd(tiny_model, x, y, AttackSpec("linf", 0.3, 10, 0.05), torch.Generator().manual_seed(1))
    assert accuracy(tiny_model, adv, y) <= accuracy(tiny_model, x, y) == 1.0
    assert accuracy(tiny_model, adv, y) < 1.0


def test_batchnorm_statistics_untouched_and_mode_restored(tiny_model):
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.rand(8, 1, 8, 8)
    pgd(tiny_model, x, torch.zeros(8, dtype=torch.long), AttackSpec("linf", 0.1, 3, 0.05))
    pgd(tiny_model, x, torch.zeros(8, dtype=torch.long), AttackSpec("l2", 0.5, 3, 0.2), loss="kl")
    assert tiny_model.training
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    tiny_model.eval()


def test_attack_reproducible_from_generator(tiny_model):
    x = torch.rand(8, 1, 8, 8)
    y = torch.zeros(8, dtype=torch.long)
    spec = AttackSpec("linf", 0.1, 3, 0.05)
    a = pgd(tiny_model, x, y, spec, torch.Generator().manual_seed(5))
    b = pgd(tiny_model, x, y, spec, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bad_spec():
    with pytest.raises(ValueError, match="'l1' is not one of linf, l2"):
        AttackSpec("l1", 0.1, 1, 0.1)
