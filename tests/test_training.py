"""Training: bitwise determinism on CPU, resume after a real kill, NaN detection, outputs on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from robrep.io.checksums import read_json
from robrep.io.weights import read_metadata
from robrep.learn.data import load_splits, save_splits
from robrep.learn.loading import load_model
from robrep.learn.training import TrainingDiverged, TrainSettings, train
from robrep.pipeline.config import resolve_method
from robrep.runtime import pick_device


def settings(**overrides):
    base = dict(
        dataset="digits",
        arch="convnet",
        method=resolve_method({"method": "pgd", "norm": "linf", "eps": 0.1, "steps": 2}),
        seed=3,
        epochs=3,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        checkpoint_every=1,
        augment=True,
        evaluation={"norm": "linf", "eps": 0.1, "steps": 3, "val_steps": 2},
    )
    base.update(overrides)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    s = load_splits("digits", "unused", {"image_size": 8}, 0.15, 0)
    path = tmp_path_factory.mktemp("data") / "splits.npz"
    save_splits(s, path)
    return s, path


def weights(path):
    return load_file(str(path))


@pytest.mark.slow
def test_outputs_and_bitwise_determinism(splits, tmp_path):
    s, _ = splits
    m1 = train(settings(), s, tmp_path / "a", pick_device("cpu"), threads=1)
    train(settings(), s, tmp_path / "b", pick_device("cpu"), threads=1)
    for name in ("model.safetensors", "best.safetensors", "checkpoints/epoch2.safetensors"):
        wa, wb = weights(tmp_path / "a" / name), weights(tmp_path / "b" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert np.array_equal(wa[k], wb[k]), (name, k)
    assert not (tmp_path / "a" / ".partial").exists()
    metrics = read_json(tmp_path / "a" / "metrics.json")  # its SHA-256 verified
    assert metrics == json.loads(json.dumps(m1))
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_clean_acc", "val_robust_acc"} <= metrics["history"][
        0
    ].keys()
    assert metrics["test"]["robust_acc"] <= metrics["test"]["clean_acc"]
    assert metrics["test"]["attack"]["steps"] == 3
    meta = read_metadata(tmp_path / "a" / "model.safetensors")
    assert (
        meta["arch"] == "convnet"
        and meta["method"]["id"] == "pgd-linf-eps0.1"
        and meta["epoch"] == 3
    )
    model, _ = load_model(tmp_path / "a" / "best.safetensors")
    assert not model.training


RESUME_SCRIPT = """
import sys
from robrep.learn.data import read_splits
from robrep.runtime import pick_device
from robrep.learn.training import TrainSettings, train
import json
settings = TrainSettings(**json.loads(sys.argv[1]))
train(settings, read_splits(sys.argv[2]), sys.argv[3], pick_device("cpu"), threads=1)
"""


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(splits, tmp_path):
    s, split_path = splits
    cfg = settings(epochs=4, checkpoint_every=2)
    train(cfg, s, tmp_path / "whole", pick_device("cpu"), threads=1)
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-c",
        RESUME_SCRIPT,
        json.dumps(cfg.__dict__),
        str(split_path),
        str(out),
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    state = out / ".partial" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    rerun = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "resuming after epoch" in rerun.stderr
    for name in ("model.safetensors", "best.safetensors", "checkpoints/epoch2.safetensors"):
        wa, wb = weights(tmp_path / "whole" / name), weights(out / name)
        for k in wa:
            assert np.array_equal(wa[k], wb[k]), (name, k)


@pytest.mark.slow
def test_changed_settings_do_not_resume(splits, tmp_path):
    s, _ = splits
    cfg = settings(epochs=2)
    assert train(cfg, s, tmp_path / "m", pick_device("cpu"), threads=1, stop_after_epoch=1) == {
        "stopped_after_epoch": 1
    }
    train(settings(epochs=2, lr=0.01), s, tmp_path / "m", pick_device("cpu"), threads=1)
    fresh = tmp_path / "fresh"
    train(settings(epochs=2, lr=0.01), s, fresh, pick_device("cpu"), threads=1)
    wa, wb = weights(tmp_path / "m" / "model.safetensors"), weights(fresh / "model.safetensors")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_with_message(splits, tmp_path):
    s, _ = splits
    bad = settings(lr=1e30, method=resolve_method({"method": "standard"}), epochs=2)
    with pytest.raises(TrainingDiverged, match="loss is (nan|inf).*lower training.lr"):
        train(bad, s, tmp_path / "nan", pick_device("cpu"), threads=1)
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_trades_and_step_schedule_run(splits, tmp_path):
    s, _ = splits
    cfg = settings(
        method=resolve_method({"method": "trades", "norm": "l2", "eps": 0.5, "steps": 2}),
        schedule="step",
        epochs=1,
        augment=False,
    )
    metrics = train(cfg, s, tmp_path / "t", pick_device("cpu"), threads=1)
    assert np.isfinite(metrics["history"][0]["train_loss"])


def test_batched_augmentation_is_the_per_image_crop_and_flip():
    """One gather on the device gives the images cropping and flipping one by one gave."""
    import torch
    import torch.nn.functional as F

    from robrep.learn.training import augment_batch

    x = torch.rand(33, 3, 10, 7)
    generator = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 9, (33,), generator=generator)
    dx = torch.randint(0, 9, (33,), generator=generator)
    flip = torch.rand(33, generator=generator) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    expected = torch.stack(
        [
            padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 7].flip(-1)
            if flip[i]
            else padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 7]
            for i in range(33)
        ]
    )
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(5)), expected)


BF16_TOLERANCE = 0.05  # test clean accuracy, absolute: bf16 + channels_last vs fp32 on digits


@pytest.mark.slow
def test_bf16_channels_last_reaches_fp32_accuracy(splits, tmp_path):
    """`training.precision: bf16` with `channels_last` trains on the CPU to within
    BF16_TOLERANCE of fp32's test accuracy, and its weights load as a plain fp32 model."""
    s, _ = splits
    standard = resolve_method({"method": "standard"})
    base = dict(method=standard, epochs=4, checkpoint_every=4, augment=False)
    fp32 = train(settings(**base), s, tmp_path / "fp32", pick_device("cpu"), threads=1)
    fast = settings(**base, precision="bf16", channels_last=True, deterministic=False)
    bf16 = train(fast, s, tmp_path / "bf16", pick_device("cpu"), threads=1)
    clean32, clean16 = fp32["test"]["clean_acc"], bf16["test"]["clean_acc"]
    print(f"digits test clean accuracy: fp32 {clean32:.4f}, bf16 + channels_last {clean16:.4f}")
    assert clean32 > 0.8, clean32
    assert abs(clean16 - clean32) <= BF16_TOLERANCE, (clean16, clean32)
    model, _ = load_model(tmp_path / "bf16" / "model.safetensors")
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in model.parameters())


def test_unknown_precision_is_refused(splits, tmp_path):
    s, _ = splits
    with pytest.raises(ValueError, match="training.precision: 'fp16' is not one of fp32, bf16"):
        train(
            settings(precision="fp16", epochs=1), s, tmp_path / "x", pick_device("cpu"), threads=1
        )
