"""The optional RobustBench extra, and a zoo checkpoint in its loader's layout."""

from __future__ import annotations

import pytest
import torch


def robustbench_or_skip():
    """robustbench, with the extra installed (`pip install -e '.[robustbench]'`)."""
    try:
        from robrep.learn.robustbench_zoo import import_robustbench

        return import_robustbench()
    except ImportError as err:
        pytest.skip(f"the robustbench extra is not installed: {err}")


RB_ARCH, RB_NAME = (
    "robustbench-linf-Ding2020MMA",
    "Ding2020MMA",
)  # WRN-28-4, the zoo's smallest Linf


def robustbench_checkpoint(model_dir, seed=0):
    """Zoo model Ding2020MMA with non-trivial weights, saved where RobustBench's loader keeps it
    ({model_dir}/cifar10/Linf/Ding2020MMA.pt) as its released checkpoints are: a dict with the
    state dict under `state_dict`, keys prefixed `module.` (DataParallel)."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(seed)
    model = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][RB_NAME]["model"]().train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    path = model_dir / "cifar10" / "Linf" / f"{RB_NAME}.pt"
    path.parent.mkdir(parents=True)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 99}, path)
    return model.eval(), path
