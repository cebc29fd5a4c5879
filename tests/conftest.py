"""Shared fixtures: small random activations and a trained tiny model, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from robrep.models import build_model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained convnet on 8x8 single-channel inputs, fixed init (eval mode)."""
    torch.manual_seed(0)
    model = build_model("convnet", 1, 10, [0.3], [0.3])
    # Give batch-norm non-trivial running statistics so train/eval differ.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, 8, 8))
    return model.eval()
