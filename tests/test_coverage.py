"""Do robrep's 95% intervals cover the truth 95% of the time? A simulation with known population
values (issue 27): Gaussian layers x_i = z W_i + s_i e_i of shared latents z, whose population
linear CKA is ||W_iᵀW_j||²_F / (||Σ_ii||_F ||Σ_jj||_F), Σ_ii = W_iᵀW_i + s_i² I (HSIC_1 is
unbiased for ||Cov(x, y)||²_F, so minibatch CKA estimates exactly this at any batch size). Each
replicate draws a fresh sample of N examples, reshuffles it into `passes` passes of batches as
extraction does, and asks whether the interval holds the population value.

The bound: with R replicates a true 95% coverage is measured within ±2·sqrt(0.95·0.05/R) (≈ 2.5
points at R = 300) in 95% of runs; the layer pairs of one replicate share its sample, so the
spread is wider. A measured coverage below 90% therefore means the intervals are too narrow, not
bad luck. The figures each test reaches are quoted in docs/similarity.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from robrep.similarity.minibatch import minibatch_cka
from robrep.study.scores import block_structure_score
from robrep.study.summary import seed_baselines

BOUND = 0.90
LATENT, WIDTH = 4, 12


def population(maps: list[np.ndarray], noise: list[float]) -> np.ndarray:
    """Population linear CKA of every pair of layers x_i = z W_i + s_i e_i, z ~ N(0, I)."""
    cov = [[w.T @ v for v in maps] for w in maps]
    for i, s in enumerate(noise):
        cov[i][i] = cov[i][i] + s**2 * np.eye(WIDTH)
    hsic = np.array([[np.sum(c**2) for c in row] for row in cov])
    norms = np.sqrt(np.diag(hsic))
    return hsic / np.outer(norms, norms)


def layered(rng: np.random.Generator, n_layers: int, blocks: int = 1):
    """Maps and noise of `n_layers` layers in `blocks` contiguous groups, each group reading its
    own half of the latents more (so a block structure exists when blocks > 1)."""
    maps, noise = [], []
    for i in range(n_layers):
        w = rng.standard_normal((LATENT, WIDTH))
        if blocks > 1:
            group = i * blocks // n_layers
            weight = np.where(np.arange(LATENT) % blocks == group, 1.0, 0.25)
            w = w * weight[:, None]
        maps.append(w)
        noise.append(float(rng.uniform(0.5, 2.5)))
    return maps, noise


def draw(rng, maps, noise, n, batch, passes, other=None):
    """One replicate's minibatch CKA result (side a against itself, or against `other`'s layers
    of the same examples)."""
    z = rng.standard_normal((n, LATENT))
    layers = [z @ w + s * rng.standard_normal((n, WIDTH)) for w, s in zip(maps, noise, strict=True)]
    order = np.stack([rng.permutation(n) for _ in range(passes)])
    if other is None:
        return minibatch_cka(layers, batch_size=batch, pass_order=order)
    return minibatch_cka(layers[:other], layers[other:], batch, pass_order=order)


@pytest.mark.parametrize(
    "n, batch, passes",
    [(300, 100, 2), (600, 60, 3)],
    ids=["default-run shape: 3 batches x 2 passes", "10 batches x 3 passes"],
)
def test_cka_intervals_cover_the_population_value(n, batch, passes):
    rng = np.random.default_rng(0)
    maps, noise = layered(rng, 5)
    truth = population(maps, noise)[:3, 3:]
    hits = []
    for r in range(300):
        res = draw(np.random.default_rng(1000 + r), maps, noise, n, batch, passes, other=3)
        low, high = res.interval()
        hits.append((low <= truth) & (truth <= high))
    coverage = float(np.mean(hits))
    print(f"CKA coverage at {n // batch} batches x {passes} passes: {coverage:.3f}")
    assert coverage >= BOUND, f"95% intervals covered {coverage:.1%}"


def test_block_score_intervals_cover_the_population_value():
    rng = np.random.default_rng(1)
    maps, noise = layered(rng, 6, blocks=2)
    truth = block_structure_score(population(maps, noise))
    hits = []
    for r in range(300):
        res = draw(np.random.default_rng(2000 + r), maps, noise, 300, 100, 2)
        low, high = res.interval(block_structure_score)
        hits.append(low <= truth <= high)
    coverage = float(np.mean(hits))
    print(f"block score coverage: {coverage:.3f}")
    assert coverage >= BOUND, f"95% intervals covered {coverage:.1%}"


def _comparisons(robust, seeds) -> xr.Dataset:
    """A summary-shaped Dataset of two same-layer comparisons: robust_vs_standard and the
    standard configuration's seeds pair, as `seed_baselines` reads it."""
    (low_r, high_r), (low_s, high_s) = robust.interval(), seeds.interval()
    dims = ("comparison", "layer_a", "layer_b")
    coords = {
        "analysis": ("comparison", ["robust_vs_standard", "seeds"]),
        "inputs": ("comparison", ["benign", "benign"]),
        "checkpoint": ("comparison", ["final", "final"]),
        "dataset": ("comparison", ["digits", "digits"]),
        "arch": ("comparison", ["convnet", "convnet"]),
        "arch_b": ("comparison", ["convnet", "convnet"]),
        "method_id": ("comparison", ["pgd", "standard"]),
        "method_id_b": ("comparison", ["standard", "standard"]),
    }
    data = {
        "similarity": (dims, np.stack([robust.cka, seeds.cka])),
        "cka_ci_low": (dims, np.stack([low_r, low_s])),
        "cka_ci_high": (dims, np.stack([high_r, high_s])),
    }
    return xr.Dataset(data, coords=coords)


def test_seed_effect_intervals_cover_the_population_effect():
    """The seed effect (same-layer CKA of robust vs standard minus that of two standard seeds)
    from two independent samples, its interval combined from both comparisons' intervals."""
    rng = np.random.default_rng(2)
    robust, seeds = layered(rng, 6), layered(rng, 6)
    truth = np.diag(population(*robust)[:3, 3:]) - np.diag(population(*seeds)[:3, 3:])
    hits = []
    for r in range(300):
        one = draw(np.random.default_rng(3000 + r), *robust, 300, 100, 2, other=3)
        two = draw(np.random.default_rng(4000 + r), *seeds, 300, 100, 2, other=3)
        got = seed_baselines(_comparisons(one, two)).isel(comparison=0)
        low, high = got.seed_effect_low.values, got.seed_effect_high.values
        hits.append((low <= truth) & (truth <= high))
    coverage = float(np.mean(hits))
    print(f"seed effect coverage: {coverage:.3f}")
    assert coverage >= BOUND, f"95% intervals covered {coverage:.1%}"
