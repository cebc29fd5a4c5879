"""PGD in pixel space (Madry et al. 2018): Linf or L2 ball, random start, projection, clamp to [0,1].

The attack runs with the model in eval mode, so batch-norm statistics are never updated by
adversarial forward passes, and restores the mode it found. All randomness comes from the
`generator` passed in, so an attack is reproducible from a seed. `pgd_in_microbatches` draws a
batch's random start at once and attacks it a microbatch at a time (what fits a GPU): each
example's gradient is its own, so the images do not depend on the microbatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that attack: the config reads AttackSpec
    import torch
    from torch import nn

DEFAULT_STEPS = 7
STEP_FACTOR = 2.5  # default step size = 2.5 * eps / steps (Madry et al. 2018)


def default_step_size(eps: float, steps: int) -> float:
    """The step size used when none is configured: 2.5 * eps / steps (Madry et al. 2018)."""
    return STEP_FACTOR * eps / max(steps, 1)


@dataclass(frozen=True)
class AttackSpec:
    """One PGD threat model: norm in {linf, l2}, radius eps, steps and step size."""

    norm: str
    eps: float
    steps: int
    step_size: float
    random_start: bool = True

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"attack norm {self.norm!r} is not one of linf, l2")
        if self.eps < 0 or self.steps < 0 or self.step_size < 0:
            raise ValueError(f"attack eps/steps/step_size must be >= 0, got {self}")

    @classmethod
    def from_method(cls, method: Mapping[str, Any]) -> AttackSpec:
        """The training attack of a resolved method (see `pipeline.config.resolve_method`)."""
        return cls(method["norm"], method["eps"], method["steps"], method["step_size"])

    @classmethod
    def from_evaluation(cls, evaluation: Mapping[str, Any], steps_key: str = "steps") -> AttackSpec:
        """The evaluation attack of config `evaluation` with `steps_key` steps (steps or val_steps)."""
        steps = int(evaluation[steps_key])
        eps = float(evaluation["eps"])
        step_size = evaluation.get("step_size") or default_step_size(eps, steps)
        return cls(evaluation["norm"], eps, steps, float(step_size))

    def as_dict(self) -> dict:
        return {
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }


def _flat_norm(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations onto the eps-ball of `norm`."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def random_start(
    x: torch.Tensor, spec: AttackSpec, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform random point of `spec`'s eps-ball per example of `x`, drawn on the CPU from
    `generator` (the same numbers whatever the device)."""
    import torch

    if spec.norm == "linf":
        u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        return (2 * u - 1) * spec.eps
    # Uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d).
    g = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device="cpu").to(x.device) ** (1.0 / d)
    return g / _flat_norm(g).clamp_min(1e-12) * (spec.eps * r).view(-1, *([1] * (x.dim() - 1)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: AttackSpec,
    generator: torch.Generator | None = None,
    loss: str = "ce",
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial examples in [0,1] within `spec`'s eps-ball around `x`.

    `loss="ce"` maximises cross-entropy against `y` (PGD-AT); `loss="kl"` maximises
    KL(f(x) || f(x')) as in TRADES, ignoring `y`. `start`: the random start, already drawn
    (`random_start`); default: drawn here from `generator`.
    """
    import torch
    import torch.nn.functional as F

    if spec.eps == 0 or spec.steps == 0:
        return x.detach().clone()
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        if loss == "kl":
            with torch.no_grad():
                clean_prob = F.softmax(model(x), dim=1)
        if not spec.random_start:
            delta = torch.zeros_like(x)
        else:
            delta = random_start(x, spec, generator) if start is None else start.to(x.device)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(spec.steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            if loss == "kl":
                objective = F.kl_div(F.log_softmax(logits, dim=1), clean_prob, reduction="sum")
            else:
                objective = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(objective, delta)
            with torch.no_grad():
                if spec.norm == "linf":
                    step = grad.sign()
                else:
                    step = grad / _flat_norm(grad).clamp_min(1e-12)
                delta = project(delta + spec.step_size * step, spec.norm, spec.eps)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()
    finally:
        model.train(was_training)


def pgd_in_microbatches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: AttackSpec,
    generator: torch.Generator | None,
    microbatch: int,
    device: torch.device | str,
) -> torch.Tensor:
    """`pgd` of a batch `x` (on the host) run `microbatch` rows at a time on `device`; the random
    start of the whole batch is drawn first, as `pgd` draws it, so the result (on the host) is the
    same for every microbatch."""
    import torch

    if microbatch >= len(x):
        return pgd(model, x.to(device), y.to(device), spec, generator).cpu()
    start = None
    if spec.random_start and spec.eps and spec.steps:
        start = random_start(x, spec, generator)
    out = torch.empty_like(x)
    for s in range(0, len(x), microbatch):
        rows = slice(s, s + microbatch)
        part = None if start is None else start[rows]
        out[rows] = pgd(model, x[rows].to(device), y[rows].to(device), spec, start=part).cpu()
    return out
