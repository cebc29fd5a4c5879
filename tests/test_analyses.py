"""Scalar summaries on synthetic matrices, and figures from a small synthetic summary Dataset."""

from __future__ import annotations

import numpy as np
import pytest

from robrep.analyses import block_structure_score, depth_below, diagonal


def block_matrix(sizes, within=0.9, across=0.3):
    n = sum(sizes)
    m = np.full((n, n), across)
    start = 0
    for s in sizes:
        m[start : start + s, start : start + s] = within
        start += s
    np.fill_diagonal(m, 1.0)
    return m


def test_block_score_ranks_block_above_uniform():
    uniform = np.full((8, 8), 0.6)
    np.fill_diagonal(uniform, 1.0)
    block = block_matrix([3, 5])
    assert block_structure_score(uniform) == pytest.approx(0.0, abs=1e-12)
    assert block_structure_score(block) == pytest.approx(0.6)
    weak = block_matrix([3, 5], within=0.7, across=0.5)
    assert (
        block_structure_score(block) > block_structure_score(weak) > block_structure_score(uniform)
    )


def test_block_score_smooth_decay_is_between():
    idx = np.arange(8)
    toeplitz = 0.9 ** np.abs(idx[:, None] - idx[None, :])
    assert (
        0 < block_structure_score(toeplitz) < block_structure_score(block_matrix([4, 4], 0.95, 0.3))
    )


def test_block_score_needs_square():
    with pytest.raises(ValueError, match="square"):
        block_structure_score(np.ones((3, 4)))


def test_depth_below_and_diagonal():
    assert depth_below(np.array([1.0, 0.95, 0.8, 0.5])) == pytest.approx(2 / 3)
    assert np.isnan(depth_below(np.array([1.0, 0.99])))
    np.testing.assert_array_equal(diagonal(np.arange(6).reshape(2, 3)), [0, 4])
