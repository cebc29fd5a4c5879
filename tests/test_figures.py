"""Figure conventions: readable method names, layer labels that stay readable at 80 layers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

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


def fake_summary(n_layers: int, seed: int = 0) -> xr.Dataset:
    """A one-dataset summary with what the cross-layer figure reads: a standard and a PGD model
    of one architecture, their benign cross-layer matrices over `n_layers` layers (two seeds
    each) and the permutation null's upper percentile."""
    rng = np.random.default_rng(seed)
    names = [f"block{i // 8}.layer{i % 8}.conv" for i in range(n_layers)]
    methods = [("standard", "standard", "none", 0.0), ("pgd-linf-eps0.05", "pgd", "linf", 0.05)]
    rows = [m for m in methods for _ in range(2)]  # two seeds each
    n = len(rows)
    sim = rng.uniform(0.2, 1.0, (1, n, n_layers, n_layers))
    null = np.full_like(sim, 0.3)
    comparison = {
        "dataset": ["cifar10"] * n,
        "analysis": ["cross_layer"] * n,
        "arch": ["wrn-28-4"] * n,
        "method_id": [m[0] for m in rows],
        "inputs": ["benign"] * n,
        "n_layers_a": [n_layers] * n,
        "n_layers_b": [n_layers] * n,
    }
    return xr.Dataset(
        {
            **{k: ("comparison", np.asarray(v)) for k, v in comparison.items()},
            "similarity": (("measure", "comparison", "layer_a", "layer_b"), sim),
            "cka_null_upper": (("measure", "comparison", "layer_a", "layer_b"), null),
            "layer_name_a": (("comparison", "layer_a"), np.array([names] * n)),
            "layer_name_b": (("comparison", "layer_b"), np.array([names] * n)),
            "model_dataset": ("model", np.array(["cifar10"] * n)),
            "model_arch": ("model", np.array(["wrn-28-4"] * n)),
            "model_method_id": ("model", np.array([m[0] for m in rows])),
            "model_method": ("model", np.array([m[1] for m in rows])),
            "model_norm": ("model", np.array([m[2] for m in rows])),
            "model_eps": ("model", np.array([m[3] for m in rows])),
        },
        coords={"measure": ["minibatch_cka"]},
    )


def _drawn_figures(monkeypatch) -> list:
    """Figures the figure functions close, kept open for the test to read."""
    from robrep.study import figures

    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    return kept


def test_the_cross_layer_figure_reads_at_80_layers(tmp_path, monkeypatch):
    """The paper's 80-layer WRN-28-4: every heatmap axis of the cross-layer figure shows at most
    MAX_LAYER_LABELS layer names, at LAYER_LABEL_SIZE points or more, none overlapping another,
    and the first layer named (issue 25)."""
    from robrep.study import figures

    kept = _drawn_figures(monkeypatch)
    ds = fake_summary(80)
    figures.draw("cross_layer_heatmaps", ds, "cifar10", {"png": tmp_path / "x.png"})
    (fig,) = kept
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2
    for ax in heatmaps:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            shown = [t for t in labels if t.get_text()]
            if not shown:  # the second column's rows are named by the first's
                continue
            assert len(shown) <= figures.MAX_LAYER_LABELS
            assert shown[0].get_text() == "block0.layer0.conv"
            assert all(t.get_fontsize() >= figures.LAYER_LABEL_SIZE for t in shown)
            boxes = [t.get_window_extent(renderer) for t in shown]
            pairs = zip(boxes, boxes[1:], strict=False)
            assert not any(a.overlaps(b) for a, b in pairs), "labels overlap"
    plt.close(fig)


def test_each_figure_has_an_svg_and_its_numbers_beside_it(tmp_path, monkeypatch):
    """Every format in plan.FIGURE_FORMATS is drawn; the CSV holds each drawn matrix value (the
    seed mean) and the null's percentile, by panel and layer names."""
    import csv

    from robrep.pipeline.plan import FIGURE_FORMATS
    from robrep.study import figures

    assert set(FIGURE_FORMATS) == set(figures.FORMATS)
    ds = fake_summary(12)
    paths = {fmt: tmp_path / f"cross_layer.{fmt}" for fmt in FIGURE_FORMATS}
    figures.draw("cross_layer_heatmaps", ds, "cifar10", paths)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths["svg"].read_bytes()[:2000]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert list(rows[0]) == list(figures.DATA_COLUMNS)
    assert len(rows) == 2 * 2 * 12 * 12  # two panels, value and null_upper per layer pair
    names = ds.layer_name_a.values[0].tolist()
    mean = ds.similarity.values[0, 2:].mean(axis=0)  # the PGD model's two seeds
    got = {
        (r["y"], r["x"]): float(r["value"])
        for r in rows
        if r["panel"] == "wrn-28-4 · PGD L∞ ε=0.05" and r["quantity"] == "value"
    }
    want = {(names[i], names[j]): mean[i, j] for i in range(12) for j in range(12)}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5)
    assert {float(r["value"]) for r in rows if r["quantity"] == "null_upper"} == {0.3}


def test_an_unknown_figure_format_is_refused(tmp_path):
    from robrep.study import figures

    with pytest.raises(ValueError, match=r"no format \['jpg'\].*'png', 'svg', 'csv'"):
        figures.draw("cross_layer_heatmaps", fake_summary(4), "cifar10", {"jpg": tmp_path / "x"})
