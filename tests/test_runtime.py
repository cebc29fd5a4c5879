"""robrep.runtime: which device a job computes on, decided without torch where no GPU can be."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from robrep.runtime import compute_device, gpu_absent, pick_device


def test_a_hidden_gpu_is_absent_and_cpu_needs_no_torch(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_absent()
    assert compute_device("auto") == "cpu" and compute_device("cpu") == "cpu"
    code = "import sys; from robrep.runtime import compute_device; compute_device('auto'); "
    code += "print('torch' in sys.modules)"
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_a_bad_device_names_the_choices():
    with pytest.raises(ValueError, match=r"device: 'tpu' is not one of auto, cpu, cuda"):
        compute_device("tpu")


def test_cuda_without_a_gpu_names_the_node(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    with pytest.raises(RuntimeError, match=rf"no GPU on {platform.node()}.*SLURM job 4711"):
        pick_device("cuda")
    with pytest.raises(RuntimeError, match="no GPU"):
        compute_device("cuda")


def test_gpu_budget_is_the_configured_one_on_a_gpu_and_none_on_the_cpu():
    from robrep.runtime import gpu_budget_mb

    assert gpu_budget_mb("cpu", {"gpu_mem_mb": 5000}) is None
    assert gpu_budget_mb("cuda:1", {"gpu_mem_mb": 5000}) == 5000.0  # no GPU asked: configured
