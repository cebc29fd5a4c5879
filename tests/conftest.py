"""Shared fixtures: small random activations and a trained tiny model, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robrep.learn.models import build_model

from helpers.workflow import TINY, make_workdir, snakemake


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


@pytest.fixture(scope="session")
def completed_run(tmp_path_factory):
    """The tiny config run to completion once, locally; tests may read it and dry-run on it."""
    workdir = make_workdir(tmp_path_factory.mktemp("wf"), TINY)
    snakemake(workdir)
    return workdir
