"""Textbook formulas the library is tested against (kept out of the library: tests use them only)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def hsic1_textbook(k: np.ndarray, l_: np.ndarray) -> float:
    """Unbiased HSIC_1 written as in Song et al. (2012), eq. 5; a reference for tests."""
    n = k.shape[0]
    k = k.copy()
    l_ = l_.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    one = np.ones(n)
    term1 = np.trace(k @ l_)
    term2 = (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ k @ l_ @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def feature_space_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from features (Kornblith et al. 2019, eq. for the linear kernel)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of `x` classified as `y` (model put in eval mode, mode restored)."""
    was_training = model.training
    model.eval()
    try:
        return (model(x).argmax(1) == y).float().mean().item()
    finally:
        model.train(was_training)


def block_score_loops(c: np.ndarray, min_size: int = 2) -> float:
    """The block-structure score segment by segment (the definition, no prefix sums)."""
    n = c.shape[0]
    best = -np.inf
    for start in range(n):
        for stop in range(start + min_size, n + 1):
            if stop - start == n:
                continue
            inside = np.zeros(n, bool)
            inside[start:stop] = True
            block = c[np.ix_(inside, inside)]
            k = inside.sum()
            within = (block.sum() - np.trace(block)) / (k * (k - 1))
            best = max(best, within - c[np.ix_(inside, ~inside)].mean())
    return float(best)
