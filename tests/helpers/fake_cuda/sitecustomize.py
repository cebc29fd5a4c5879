"""Loaded through PYTHONPATH by the SLURM test only (with ROBREP_FAKE_GPUS set): the test node's
GPUs are gres on character devices with no GPU behind them, so `device: cuda` computes on the
CPU in a job SLURM gave one of them (CUDA_VISIBLE_DEVICES set) and fails in any other job. A GPU
rule submitted without a GPU request therefore fails the run."""

import os

if os.environ.get("ROBREP_FAKE_GPUS"):
    import robrep.runtime as runtime

    _pick_device = runtime.pick_device

    def pick_device(requested: str = "auto"):
        if requested != "cuda":
            return _pick_device(requested)
        if not os.environ.get("CUDA_VISIBLE_DEVICES"):
            raise RuntimeError(
                f"device: cuda in SLURM job {os.environ.get('SLURM_JOB_ID')}, which was given "
                "no GPU (CUDA_VISIBLE_DEVICES unset)"
            )
        import torch

        return torch.device("cpu")

    runtime.pick_device = pick_device
