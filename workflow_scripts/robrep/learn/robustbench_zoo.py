"""RobustBench's model zoo (Croce et al. 2021, "RobustBench: a standardized adversarial
robustness benchmark") as robrep architectures, read from a local `model_dir` only.

An architecture `robustbench-{threat}-{name}` is the zoo's model `name` for threat model
`threat` (linf, l2, corruptions) of the dataset with that many classes (CIFAR-10 or CIFAR-100).
Its checkpoint lies where RobustBench's own loader keeps it, `{model_dir}/{dataset}/{Threat}/
{name}.pt`; the loader is only called when that file exists, so nothing is ever downloaded.

The package is an optional extra (`pip install -e '.[robustbench]'`). RobustBench 1.1.1 imports
the AutoAttack reference implementation under its GitHub name `autoattack`; PyPI ships the same
code as `pyautoattack`, which robustbench's own metadata requires, so that name is bound to it.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

# robrep's threat token -> RobustBench's ThreatModel value (the folder name in model_dir).
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}
# RobustBench's datasets robrep has, by class count (how an architecture finds its dataset).
DATASETS = {10: "cifar10", 100: "cifar100"}
INSTALL = "pip install -e '.[robustbench]' (the robustbench extra in pyproject.toml)"


def import_robustbench() -> ModuleType:
    """The `robustbench` package, with `autoattack` bound to `pyautoattack`; ImportError saying
    how to install the extra when it is absent."""
    try:
        pyautoattack = importlib.import_module("pyautoattack")
        state = importlib.import_module("pyautoattack.state")
    except ImportError as err:
        raise ImportError(f"robustbench architectures need pyautoattack: {INSTALL}") from err
    for name, module in (("autoattack", pyautoattack), ("autoattack.state", state)):
        bound = sys.modules.get(name)
        if bound is not None and bound is not module:
            raise ImportError(
                f"module {name!r} is already {getattr(bound, '__file__', bound)!r}, not "
                f"pyautoattack's: robustbench would run against it"
            )
        sys.modules[name] = module
    try:
        with warnings.catch_warnings():
            # robustbench.loaders imports pkg_resources, which warns that it is deprecated, and
            # a zoo model uses torch.jit.interface, which warns that it will go.
            for category in (UserWarning, DeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            return importlib.import_module("robustbench")
    except ImportError as err:
        raise ImportError(
            f"robustbench architectures need the robustbench package: {INSTALL} ({err})"
        ) from err


def check_entry(
    arch_name: str,
    threat: str,
    name: str,
    dataset: str,
    num_classes: int,
    checkpoint: str | Path,
    norm: str | None,
) -> None:
    """An `external_models` entry of RobustBench architecture `arch_name`: the zoo has `name` for
    `threat` on `dataset`, the checkpoint is in RobustBench's layout, and a robust method's norm
    is the threat model's; ValueError naming the valid choice otherwise."""
    if DATASETS.get(num_classes) != dataset:
        raise ValueError(
            f"{arch_name}: RobustBench's datasets here are {', '.join(DATASETS.values())}, "
            f"not {dataset}"
        )
    zoo_entry(name, threat, num_classes)
    model_dir_of(checkpoint, dataset, threat, name)
    if norm is not None and threat in ("linf", "l2") and norm != threat:
        raise ValueError(
            f"{arch_name} is a {THREATS[threat]} model: its method's norm is {threat}, not {norm}"
        )


def zoo_entry(name: str, threat: str, num_classes: int) -> dict:
    """The zoo's entry of model `name` for `threat` on the dataset with `num_classes` classes;
    ValueError naming the valid choices when there is none, or when robrep cannot load it from a
    local file (a timm model or an ensemble of checkpoints)."""
    if threat not in THREATS:
        raise ValueError(f"threat model {threat!r} is not one of {', '.join(THREATS)}")
    if num_classes not in DATASETS:
        raise ValueError(
            f"RobustBench models are for {', '.join(DATASETS.values())}, not a "
            f"{num_classes}-class dataset"
        )
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dataset = BenchmarkDataset(DATASETS[num_classes])
    models = model_dicts[dataset].get(ThreatModel(THREATS[threat]), {})
    if name not in models:
        close = [n for n in models if n.lower().startswith(name[:4].lower())] or list(models)
        raise ValueError(
            f"RobustBench has no {dataset.value} {THREATS[threat]} model {name!r}; e.g. "
            f"{', '.join(close[:12])}"
        )
    entry = models[name]
    # RobustBench's loader builds a timm model, weights from the Hub, for a name timm knows (or
    # one without a checkpoint of its own) before it looks at model_dir: refused, never fetched.
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset.value}_{THREATS[threat].lower()}"
    if entry["gdrive_id"] is None or timm.is_model(timm_name):
        kind = "a timm model, read from the Hugging Face Hub"
    elif isinstance(entry["gdrive_id"], list):
        kind = "an ensemble of checkpoints"
    else:
        return entry
    raise ValueError(
        f"RobustBench model {name!r} is {kind}; robrep imports single-checkpoint zoo models "
        f"from a local model_dir only"
    )


def build(name: str, threat: str, num_classes: int) -> nn.Module:
    """The zoo's architecture of `name` (no weights; RobustBench models take [0, 1] pixels and
    normalise inside themselves where they need to)."""
    return zoo_entry(name, threat, num_classes)["model"]()


def checkpoint_path(model_dir: str | Path, dataset: str, threat: str, name: str) -> Path:
    """Where RobustBench's loader reads (and would download) model `name`: `{model_dir}/
    {dataset}/{Threat}/{name}.pt`."""
    return Path(model_dir) / dataset / THREATS[threat] / f"{name}.pt"


def model_dir_of(checkpoint: str | Path, dataset: str, threat: str, name: str) -> Path:
    """The `model_dir` holding `checkpoint` in RobustBench's layout; ValueError naming the
    expected path otherwise."""
    checkpoint = Path(checkpoint)
    model_dir = checkpoint.parents[2] if len(checkpoint.parents) > 2 else Path(".")
    if checkpoint_path(model_dir, dataset, threat, name) != checkpoint:
        raise ValueError(
            f"{str(checkpoint)!r} is not in RobustBench's layout: the checkpoint of {name} must be "
            f"{{model_dir}}/{dataset}/{THREATS[threat]}/{name}.pt"
        )
    return model_dir


def load(name: str, threat: str, num_classes: int, checkpoint: str | Path) -> nn.Module:
    """Model `name` with the weights in `checkpoint` (RobustBench's layout), loaded by
    RobustBench's own loader (its key rules and per-model exceptions), in eval mode. The file
    must exist: the loader is never let download."""
    zoo_entry(name, threat, num_classes)
    dataset = DATASETS[num_classes]
    model_dir = model_dir_of(checkpoint, dataset, threat, name)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"RobustBench checkpoint {checkpoint} does not exist")
    from robustbench.utils import load_model

    return load_model(name, model_dir=model_dir, dataset=dataset, threat_model=THREATS[threat])
