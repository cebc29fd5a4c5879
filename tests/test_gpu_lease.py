"""robrep.runtime.lease_gpu: on a workstation each GPU job leases a GPU of its own (tested on the
CPU: the leases are lock files, whatever the devices are)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from robrep.runtime import GpuBusyError, gpu_ids, lease_gpu


@pytest.fixture(autouse=True)
def _own_leases(monkeypatch):
    """Each test's leases are its own: forget the ones earlier tests took in this process."""
    import robrep.runtime as runtime

    held = list(runtime._LEASES)
    yield
    for fh in runtime._LEASES[len(held) :]:
        fh.close()
    runtime._LEASES[:] = held


def test_jobs_get_different_gpus_and_wait_when_all_are_leased(tmp_path):
    ids = ["0", "1"]
    assert lease_gpu(ids, tmp_path) == 0
    assert lease_gpu(ids, tmp_path) == 1  # another job: the next GPU
    with pytest.raises(GpuBusyError, match=r"all 2 GPUs \(0, 1\) stayed leased .*--resources gpu"):
        lease_gpu(ids, tmp_path, timeout=0.3, poll=0.1)


def test_a_lease_ends_with_its_process_even_when_killed(tmp_path):
    code = (
        "import sys, time; from robrep.runtime import lease_gpu; "
        f"print(lease_gpu(['0'], {str(tmp_path)!r}), flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with pytest.raises(GpuBusyError):
            lease_gpu(["0"], tmp_path, timeout=0.2, poll=0.05)
        assert str(holder.pid) in (tmp_path / "gpu-0.lock").read_text()  # who holds it
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    assert lease_gpu(["0"], tmp_path, timeout=5, poll=0.05) == 0  # freed by the kill
    assert time.monotonic() - start < 5


def test_gpu_ids_follow_the_visible_mask(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_ids(2) == ["3", "5"]  # jobs with other masks still agree on which GPU is which
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_ids(3) == ["0", "1", "2"]
