"""Figure conventions: readable method names, layer labels that stay readable at 80 layers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robrep.ids import method_id, method_label  # noqa: E402
from robrep.study.figures import LAYER_LABEL_SIZE, MAX_LAYER_LABELS, layer_ticks  # noqa: E402


@pytest.mark.parametrize(
    "method, label",
    [
        ({"method": "standard"}, "standard"),
        ({"method": "pgd", "norm": "linf", "eps": 0.05}, "PGD L∞ ε=0.05"),
        ({"method": "trades", "norm": "linf", "eps": "8/255"}, "TRADES L∞ ε=8/255"),
        ({"method": "pgd", "norm": "l2", "eps": 0.5}, "PGD L2 ε=0.5"),
    ],
)
def test_method_label_reads_the_method_id(method, label):
    assert method_label(method_id(method)) == label


def test_an_unknown_id_is_its_own_label():
    assert method_label("cifar10-release-robust") == "cifar10-release-robust"


@pytest.mark.parametrize("layers", [8, 24, 80])
def test_layer_labels_stay_readable_at_80_layers(layers):
    """At most MAX_LAYER_LABELS labels per axis, none smaller than LAYER_LABEL_SIZE points, the
    first layer always labelled, and every layer labelled when they fit."""
    names = [f"block{i // 4}.layer{i % 4}.bn1" for i in range(layers)]
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.random.default_rng(0).random((layers, layers)), origin="lower")
    layer_ticks(ax, "x", names)
    layer_ticks(ax, "y", names, labelled=False)
    fig.canvas.draw()
    shown = [t for t in ax.get_xticklabels() if t.get_text()]
    assert len(shown) <= MAX_LAYER_LABELS and shown[0].get_text() == names[0]
    assert all(t.get_fontsize() >= LAYER_LABEL_SIZE for t in shown)
    if layers <= MAX_LAYER_LABELS:
        assert [t.get_text() for t in shown] == names
    assert not [t for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)


def test_the_y_axis_fits_what_is_drawn():
    """Probe accuracies of 0.90-0.99 on a fixed 0-1 axis were a flat line (issue 25): the axis
    starts just below the lowest line or band, never below 0, and ends at 1.02."""
    from robrep.study.figures import _fit_ylim

    fig, ax = plt.subplots()
    depth = np.linspace(0, 1, 5)
    ax.plot(depth, [0.93, 0.95, 0.97, 0.99, 0.98])
    ax.fill_between(depth, [0.91] * 5, [0.99] * 5)
    _fit_ylim(ax)
    assert ax.get_ylim() == pytest.approx((0.85, 1.02))
    ax.plot(depth, [0.01, 0.2, 0.5, 0.7, 0.9])
    _fit_ylim(ax)
    assert ax.get_ylim() == pytest.approx((0.0, 1.02))
    plt.close(fig)
