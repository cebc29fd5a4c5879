"""The architecture registry: which names robrep builds, their families, and the checks a config
name gets, without importing torch (the workflow reads it at start-up; `learn.models` builds).

An entry is a name pattern, a description, a kind, the `learn.models` class that builds it with
the options its name gives, and whether its architectures are one network at several
widths/depths (`scaled`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One registry entry: the name pattern, how to describe it, its kind, the network class of
    `learn.models` and its options from the name's match, and whether its architectures are one network at several widths/depths (`scaled`: the kind is
    then their family, which the width_depth analysis compares; otherwise each architecture is a
    family of its own)."""

    pattern: re.Pattern[str]
    description: str
    kind: str
    network: str  # a class of robrep.learn.models
    options: Callable[[re.Match[str]], dict[str, Any]]
    scaled: bool = True


ARCHITECTURES = [
    Architecture(
        re.compile(r"^convnet(?:-(\d+))?$"),
        "convnet or convnet-{width}",
        "convnet",
        "ConvNet",
        lambda m: dict(width=int(m.group(1) or 1)),
    ),
    Architecture(re.compile(r"^resnet18$"), "resnet18", "resnet18", "ResNet", lambda m: {}),
    Architecture(
        re.compile(r"^preact_resnet18$"),
        "preact_resnet18",
        "preact_resnet18",
        "ResNet",
        lambda m: dict(preact=True),
    ),
    Architecture(
        re.compile(r"^wrn-(\d+)-(\d+)$"),
        "wrn-{depth}-{width} (depth = 6n + 4, e.g. wrn-28-10)",
        "wrn",
        "WideResNet",
        lambda m: dict(depth=int(m.group(1)), width=int(m.group(2))),
    ),
    Architecture(re.compile(r"^vgg16_bn$"), "vgg16_bn", "vgg16_bn", "VGG16BN", lambda m: {}),
    Architecture(
        re.compile(r"^release-wrn-(\d+)-(\d+)$"),
        "release-wrn-{depth}-{width} (the paper's released WRN, its checkpoints' keys)",
        "release-wrn",
        "ReleaseWideResNet",
        lambda m: dict(depth=int(m.group(1)), width=int(m.group(2))),
    ),
    Architecture(
        re.compile(r"^torchvision-([a-z0-9_]+)$"),
        "torchvision-{name} (a torchvision classifier, e.g. torchvision-resnet18)",
        "torchvision",
        "TorchvisionNet",
        lambda m: dict(name=m.group(1)),
        scaled=False,  # resnet18 and vgg16 are not one network at two sizes
    ),
    Architecture(
        re.compile(r"^robustbench-(linf|l2|corruptions)-([A-Za-z0-9_-]+)$"),
        "robustbench-{linf|l2|corruptions}-{zoo name} (RobustBench's model zoo, e.g. "
        "robustbench-linf-Ding2020MMA; the robustbench extra)",
        "robustbench",
        "RobustBenchNet",
        lambda m: dict(threat=m.group(1), name=m.group(2)),
        scaled=False,
    ),
]
REGISTRY = [a.description for a in ARCHITECTURES]


# Bounds on a scaled network's name: beyond RobustBench's largest (WRN-106-16, WRN-70-16) by a
# margin; a larger one is a typo (a 300-digit width crashed inside torch).
MAX_DEPTH, MAX_WIDTH = 1000, 64


def architecture_entry(name: str) -> tuple[Architecture, re.Match[str]]:
    """The registry entry of `name` and its match; ValueError naming the registry otherwise."""
    for arch in ARCHITECTURES:
        match = arch.pattern.match(name)
        if match:
            if arch.kind == "torchvision":
                from torchvision import models as tv

                names = tv.list_models(module=tv)
                if match.group(1) not in names:
                    raise ValueError(
                        f"{name!r}: torchvision has no classifier {match.group(1)!r}; e.g. "
                        f"{', '.join(n for n in names if n.startswith(('resnet', 'vgg')))}"
                    )
            if arch.kind == "robustbench":
                from robrep.learn.robustbench_zoo import import_robustbench

                try:
                    import_robustbench()
                except ImportError as err:
                    raise ValueError(f"{name!r}: {err}") from None
            if arch.kind in ("wrn", "release-wrn"):
                depth, width = int(match.group(1)), int(match.group(2))
                if not 10 <= depth <= MAX_DEPTH or (depth - 4) % 6 or not 1 <= width <= MAX_WIDTH:
                    raise ValueError(
                        f"{name!r}: WRN depth must be 6n + 4 in [10, {MAX_DEPTH}] and width in "
                        f"[1, {MAX_WIDTH}] (e.g. wrn-10-1, wrn-16-4, wrn-28-10, wrn-70-16)"
                    )
            if arch.kind == "convnet" and match.group(1):
                if not 1 <= int(match.group(1)) <= MAX_WIDTH:
                    raise ValueError(f"{name!r}: convnet width must be in [1, {MAX_WIDTH}]")
            return arch, match
    raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(REGISTRY)}")


def check_architecture(name: str) -> None:
    """Raise ValueError naming the registry when `name` is not a buildable architecture."""
    architecture_entry(name)


def arch_kind(name: str) -> str:
    """The registry entry architecture `name` belongs to (``torchvision-resnet18`` ->
    ``torchvision``)."""
    return architecture_entry(name)[0].kind


def arch_family(name: str) -> str:
    """The family of architecture `name` (``wrn-28-4`` -> ``wrn``; a foreign network, whose
    widths and depths robrep does not know, is its own: ``torchvision-resnet18``)."""
    arch = architecture_entry(name)[0]
    return arch.kind if arch.scaled else name


def arch_parts(name: str) -> tuple[str, ...]:
    """The fields architecture `name` is made of (``robustbench-linf-Ding2020MMA`` ->
    ``("linf", "Ding2020MMA")``; ``wrn-28-4`` -> ``("28", "4")``)."""
    return architecture_entry(name)[1].groups()
