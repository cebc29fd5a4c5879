"""A trained model back from its weights file, and the examples a rule evaluates it on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robrep.ids import ModelKey
from robrep.io.weights import read_metadata, verified_state
from robrep.learn.cost import job_microbatch, model_cost_of
from robrep.learn.data import evaluation_subset, read_splits
from robrep.learn.models import ProbedNet, build_model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ProbedNet, dict]:
    """Rebuild the architecture named in the file's metadata and load its weights (eval mode),
    after verifying the tensors against the SHA-256 saved with them."""
    meta = read_metadata(path)
    state = verified_state(path)
    model = build_model(
        meta["arch"], meta["in_channels"], meta["num_classes"], meta["mean"], meta["std"]
    )
    model.load_state_dict(state)
    return model.to(device).eval(), meta


@dataclass(frozen=True)
class ModelOnSubset:
    """A model's weights loaded with the examples a rule evaluates it on: the fixed seeded
    subset of the test split (`learn.data.evaluation_subset`)."""

    model: ProbedNet
    meta: dict
    key: ModelKey
    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray

    def microbatch(self, stage: str, batch: int, budget_mb: float | None) -> int:
        """Rows of each pass of a `stage` batch of this model that fit `budget_mb` on the GPU
        (`learn.cost.job_microbatch`)."""
        if budget_mb is None:  # on the CPU: the whole batch, no model cost to count
            return batch
        return job_microbatch(model_cost_of(self.meta), stage, batch, budget_mb)


def load_on_subset(
    weights: str | Path,
    splits: str | Path,
    n_examples: int,
    subset_seed: int,
    device: str | torch.device = "cpu",
) -> ModelOnSubset:
    """`load_model(weights)` and the `n_examples` test examples chosen by `subset_seed`: what
    the attack, extraction and AutoAttack rules all start from."""
    model, meta = load_model(weights, device)
    data = read_splits(splits)
    idx = evaluation_subset(data.y_test, n_examples, subset_seed)
    return ModelOnSubset(model, meta, ModelKey.of(meta), data.x_test[idx], data.y_test[idx], idx)
