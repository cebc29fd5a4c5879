"""Figures of the summary Dataset (see `summary.aggregate`), one function per figure: a PNG, an
SVG beside it for papers, and a CSV of the numbers drawn (`FORMATS`).

`FIGURES` maps each figure name an analysis declares (`analyses.ANALYSES[...].figures`) to the
function that draws it; `report/<name>.rst` is its caption. Every figure is drawn once per
dataset (`draw`, on the summary's part of that dataset, `for_dataset`), its title naming the
dataset: nothing averages across datasets.

Seeds are averaged where a figure shows one curve or matrix per model configuration; a figure
that shows spread draws the seed range as a band.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from weakref import WeakKeyDictionary

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from robrep.ids import method_label  # noqa: E402
from robrep.io.atomic import atomic_output  # noqa: E402
from robrep.similarity.result import MINIBATCH_CKA as METRIC  # noqa: E402
from robrep.study.analyses import ANALYSES  # noqa: E402
from robrep.study.findings import claim_verdicts  # noqa: E402
from robrep.study.scores import depth_matched_diagonal  # noqa: E402
from robrep.study.study import FROM_STANDARD  # noqa: E402

DATASET_ATTR = "figure_dataset"  # the dataset a summary part holds (`for_dataset`)
MEASURE_ATTR = "figure_measure"  # the minibatch measure a summary part is read under (`draw`)


def for_dataset(ds: xr.Dataset, dataset: str) -> xr.Dataset:
    """The comparisons and models of one dataset of the summary, labelled with it."""
    part = ds.isel(
        comparison=np.flatnonzero(ds.dataset.values == dataset),
        model=np.flatnonzero(ds.model_dataset.values == dataset),
    )
    part.attrs[DATASET_ATTR] = dataset
    return part


def draw(
    name: str,
    ds: xr.Dataset,
    dataset: str,
    paths: Mapping[str, str | Path],
    measure: str = METRIC,
) -> None:
    """Figure `name` of `dataset`'s part of the summary `ds` under the minibatch measure
    `measure`, written in each format of `paths` (format -> path; formats in `FORMATS`)."""
    unknown = sorted(set(paths) - set(FORMATS))
    if unknown:
        raise ValueError(f"figure {name}: no format {unknown}; the formats are {list(FORMATS)}")
    if measure not in ds.measure.values:
        raise ValueError(
            f"figure {name}: the summary has no measure {measure!r}; it holds "
            f"{list(ds.measure.values)}"
        )
    part = for_dataset(ds.sel(measure=measure), dataset)
    part.attrs[MEASURE_ATTR] = measure
    FIGURES[name](part, paths)


def _metric(ds: xr.Dataset) -> str:
    """The name of the measure a summary part is read under (axis and colour-bar labels)."""
    return ds.attrs.get(MEASURE_ATTR, METRIC)


def _fit_ylim(ax, top: float = 1.02, pad: float = 0.05) -> None:
    """The y axis from just below the lowest value drawn (lines and bands, to the nearest 0.05)
    up to `top`: a fixed 0-1 axis hid effects (probe accuracies of 0.90-0.99)."""
    values = [
        np.asarray(line.get_ydata(), float) for line in ax.lines if line.get_label() != "chance"
    ]
    values += [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    low = 0.0 if finite.size == 0 else max(0.0, np.floor((finite.min() - pad) * 20) / 20)
    ax.set_ylim(low, top)


def _band_legend(ax, text: str) -> None:
    """The legend with an entry saying what the shaded bands are."""
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    band = Patch(facecolor="grey", alpha=0.3, label=text)
    ax.legend(handles=[*handles, band], labels=[*labels, text], fontsize=7)


# The numbers drawn on each axes besides its lines (which `_drawn_rows` reads off the artists):
# matrices, bands and interval bars, recorded where they are drawn (`_record`).
_RECORDED: WeakKeyDictionary = WeakKeyDictionary()
DATA_COLUMNS = ("panel", "series", "quantity", "x", "y", "value")


def _record(ax, series: str, quantity: str, xs, values, ys=None) -> None:
    """Note numbers drawn on `ax` for the figure's CSV: `values` at `xs` (a curve, a band edge, a
    bar end) or, with `ys`, a matrix of rows `ys` and columns `xs`."""
    rows = _RECORDED.setdefault(ax, [])
    values = np.asarray(values, float)
    if ys is None:
        rows += [(series, quantity, x, "", v) for x, v in zip(xs, values, strict=True)]
    else:
        rows += [
            (series, quantity, x, y, values[i, j])
            for i, y in enumerate(ys)
            for j, x in enumerate(xs)
        ]


def _heatmap(ax, mat: np.ndarray, rows: Sequence, cols: Sequence, series: str, **kw):
    """`ax.imshow(mat)` (origin lower), its values recorded by row and column name."""
    _record(ax, series, "value", list(cols), mat, ys=list(rows))
    return ax.imshow(mat, origin="lower", **kw)


def _band(ax, xs, low, high, series: str, **kw) -> None:
    """`ax.fill_between` from `low` to `high`, both edges recorded."""
    _record(ax, series, "band_low", xs, low)
    _record(ax, series, "band_high", xs, high)
    ax.fill_between(xs, low, high, **kw)


def _drawn_rows(fig) -> list[tuple]:
    """Every number `fig` draws, one row per point (`DATA_COLUMNS`): each labelled line's points,
    then what `_record` noted; the panel is the axes' title."""
    rows = []
    for ax in fig.axes:
        panel = " · ".join(ax.get_title().split("\n"))
        for line in ax.lines:
            label = str(line.get_label())
            if label.startswith("_"):  # matplotlib's unlabelled helpers
                continue
            xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata(), float)
            if xs.size == 2 and label == "chance":  # axhline: axes coordinates in x
                xs = np.array(["", ""])
            rows += [(panel, label, "value", x, "", y) for x, y in zip(xs, ys, strict=True)]
        rows += [(panel, *row) for row in _RECORDED.get(ax, [])]
    return rows


def _write_csv(fig, path: Path) -> None:
    """The numbers behind `fig`, long format (`DATA_COLUMNS`), NaN as an empty field."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(DATA_COLUMNS)
        for *keys, value in _drawn_rows(fig):
            keys = [f"{k:.6g}" if isinstance(k, (float, np.floating)) else k for k in keys]
            out.writerow([*keys, "" if not np.isfinite(value) else f"{value:.6g}"])


FORMATS: dict[str, Callable] = {
    "png": lambda fig, path: fig.savefig(path, format="png", dpi=110, bbox_inches="tight"),
    "svg": lambda fig, path: fig.savefig(path, format="svg", bbox_inches="tight"),
    "csv": _write_csv,
}


def _verdict_notes(ax, ds: xr.Dataset, claim: str, values: np.ndarray) -> None:
    """Beside each robust configuration's point of an eps plot of `values` (per model, seed
    mean), the verdict of `claim` on it (`findings.claim_verdicts`, as in findings.csv), in the
    colour of its architecture's line; notes of nearby points are stacked, not overprinted."""
    span = float(np.nanmax(values) - np.nanmin(values)) or 1.0
    placed: list[tuple[float, float]] = []
    colours = {str(line.get_label()): line.get_color() for line in ax.lines}
    for (arch, method), verdict in claim_verdicts(ds, claim, _metric(ds)).items():
        sel = (ds.model_arch.values == arch) & (ds.model_method_id.values == method)
        x, y = float(ds.model_eps.values[sel][0]), float(np.nanmean(values[sel]))
        kind, norm = ds.model_method.values[sel][0], ds.model_norm.values[sel][0]
        near = sum(px == x and abs(py - y) < 0.06 * span for px, py in placed)
        placed.append((x, y))
        ax.annotate(
            verdict,
            (x, y),
            xytext=(4, -8 - 7 * near),
            textcoords="offset points",
            fontsize=6,
            color=colours.get(EPS_LINE.format(arch=arch, kind=kind, norm=norm), "dimgrey"),
        )


def _save(fig, paths: Mapping[str, str | Path], ds: xr.Dataset) -> None:
    """Write `fig` in each format of `paths`, its title led by the dataset its data come from."""
    dataset = ds.attrs.get(DATASET_ATTR)
    measure = ds.attrs.get(MEASURE_ATTR, METRIC)
    # A figure with only an axes title gets its suptitle above it, not over it.
    above = {} if fig.get_suptitle() else {"y": 1.04}
    if measure != METRIC:  # figures read under another measure say so in their title
        title = fig.get_suptitle()
        fig.suptitle(f"{title} [{measure}]" if title else measure, **above)
    if dataset:
        title = fig.get_suptitle()
        fig.suptitle(f"{dataset}: {title}" if title else dataset, **above)
    for fmt, path in paths.items():
        with atomic_output(path) as tmp:
            FORMATS[fmt](fig, tmp)
    plt.close(fig)


MAX_LAYER_LABELS = 24  # layer tick labels per heatmap axis; more layers label every k-th one
LAYER_LABEL_SIZE = 5  # points: the smallest tick label drawn


def layer_ticks(ax, axis: str, names: Sequence[str], labelled: bool = True) -> None:
    """Layer tick labels on `axis` ("x" or "y") of a heatmap over `names`, at LAYER_LABEL_SIZE
    points: every layer up to MAX_LAYER_LABELS, else every k-th (the first always), so an
    80-layer matrix stays readable. `labelled` False keeps the ticks without their labels."""
    step = max(1, -(-len(names) // MAX_LAYER_LABELS))
    ticks = list(range(0, len(names), step))
    labels = [names[i] for i in ticks] if labelled else []
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=90, fontsize=LAYER_LABEL_SIZE)
    else:
        ax.set_yticks(ticks, labels, fontsize=LAYER_LABEL_SIZE)


def _select(ds: xr.Dataset, **coords) -> np.ndarray:
    """Indices of comparisons whose coordinates equal `coords`."""
    mask = np.ones(ds.sizes["comparison"], bool)
    for key, value in coords.items():
        mask &= ds[key].values == value
    return np.flatnonzero(mask)


def _methods(ds: xr.Dataset) -> list[str]:
    """Method ids ordered standard first, then by method kind, norm and eps."""
    ids = ds.model_method_id.values.tolist()
    key = {
        m: (kind, [] if norm == "none" else [norm], eps)
        for m, kind, norm, eps in zip(
            ids,
            ds.model_method.values.tolist(),
            ds.model_norm.values.tolist(),
            ds.model_eps.values.tolist(),
            strict=True,
        )
    }
    order = {"standard": 0, "pgd": 1, "trades": 2}
    return sorted(dict.fromkeys(ids), key=lambda m: (order.get(key[m][0], 3), *key[m][1:]))


def _mean_matrix(ds: xr.Dataset, idx: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Seed-averaged matrix of comparisons `idx` (same architecture, so the same layers)."""
    c0 = int(idx[0])
    la, lb = int(ds.n_layers_a[c0]), int(ds.n_layers_b[c0])
    mats = ds["similarity"].isel(comparison=idx).values[:, :la, :lb]
    names_a = ds.layer_name_a.isel(comparison=c0).values[:la].tolist()
    names_b = ds.layer_name_b.isel(comparison=c0).values[:lb].tolist()
    return np.nanmean(mats, axis=0), names_a, names_b


def _mean_null(ds: xr.Dataset, idx: np.ndarray) -> np.ndarray:
    """Seed-averaged upper percentile of the permutation null of comparisons `idx`."""
    c0 = int(idx[0])
    la, lb = int(ds.n_layers_a[c0]), int(ds.n_layers_b[c0])
    return np.nanmean(ds["cka_null_upper"].isel(comparison=idx).values[:, :la, :lb], axis=0)


def cross_layer_heatmaps(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Architectures x methods grid of benign cross-layer CKA, one colour scale 0-1; values at or
    below the permutation null's upper percentile (when computed) are grey."""
    null = ds.get("cka_null_upper")
    cmap = plt.get_cmap("magma").with_extremes(bad="lightgrey")
    archs = list(dict.fromkeys(ds.model_arch.values.tolist()))
    methods = _methods(ds)
    fig, axes = plt.subplots(
        len(archs),
        len(methods),
        figsize=(2.6 * len(methods) + 1.5, 2.8 * len(archs) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for r, arch in enumerate(archs):
        for c, method in enumerate(methods):
            ax = axes[r, c]
            idx = _select(ds, analysis="cross_layer", arch=arch, method_id=method, inputs="benign")
            if len(idx) == 0:
                ax.axis("off")
                continue
            mat, names, _ = _mean_matrix(ds, idx)
            # every value in the CSV, the null's percentile beside it; the figure greys those
            # indistinguishable from the permutation null
            _record(ax, _metric(ds), "value", names, mat, ys=names)
            if null is not None:
                upper = _mean_null(ds, idx)
                _record(ax, _metric(ds), "null_upper", names, upper, ys=names)
                mat = np.where(mat > upper, mat, np.nan)
            image = ax.imshow(mat, vmin=0, vmax=1, cmap=cmap, origin="lower")
            layer_ticks(ax, "x", names)
            layer_ticks(ax, "y", names, labelled=c == 0)
            ax.set_title(f"{arch}\n{method_label(method)}", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=f"{_metric(ds)} (mean over seeds)")
    masked = (
        " (grey: not above the permutation null's upper percentile)" if null is not None else ""
    )
    fig.suptitle(f"Cross-layer similarity, benign inputs{masked}")
    _save(fig, paths, ds)


EPS_LINE = "{arch} {kind}-{norm}"  # an eps plot's line: one per architecture, method kind, norm


def _eps_lines(
    ds: xr.Dataset,
    ax,
    values: np.ndarray,
    label_fmt: str,
    band: bool = True,
    interval: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Plot `values` (per model) against eps, a line per (arch, method kind, norm), seed band;
    with `interval` (per-model low and high), bars from the lowest low to the highest high."""
    arch = ds.model_arch.values
    kind = ds.model_method.values
    norm = ds.model_norm.values
    eps = ds.model_eps.values
    for a in dict.fromkeys(arch.tolist()):
        for k in ("pgd", "trades"):
            for n in ("linf", "l2"):
                sel = (arch == a) & (((kind == k) & (norm == n)) | (kind == "standard"))
                if not ((arch == a) & (kind == k) & (norm == n)).any():
                    continue
                xs = sorted(set(eps[sel].tolist()))
                mean = [np.nanmean(values[sel & (eps == x)]) for x in xs]
                series = label_fmt.format(arch=a, kind=k, norm=n)
                (line,) = ax.plot(xs, mean, marker="o", label=series)
                if interval is not None:
                    lo = np.array([np.nanmin(interval[0][sel & (eps == x)]) for x in xs])
                    hi = np.array([np.nanmax(interval[1][sel & (eps == x)]) for x in xs])
                    _record(ax, series, "interval_low", xs, lo)
                    _record(ax, series, "interval_high", xs, hi)
                    ax.errorbar(
                        xs,
                        mean,
                        # a percentile interval may miss its point estimate: never a negative bar
                        yerr=np.fmax([np.subtract(mean, lo), hi - mean], 0),
                        fmt="none",
                        color=line.get_color(),
                        capsize=3,
                    )
                if band:
                    lo = [np.nanmin(values[sel & (eps == x)]) for x in xs]
                    hi = [np.nanmax(values[sel & (eps == x)]) for x in xs]
                    _band(ax, xs, lo, hi, series, alpha=0.2)
    ax.set_xlabel("training eps (0 = standard)")
    ax.legend(fontsize=7)


def block_score_vs_eps(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Block-structure score of the cross-layer CKA matrix against training eps: the seed range
    as a band, the jackknife interval (widest over seeds) as bars."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    _eps_lines(
        ds,
        ax,
        ds.block_score.values,
        EPS_LINE,
        interval=(ds.block_score_low.values, ds.block_score_high.values),
    )
    _verdict_notes(ax, ds, "block_structure", ds.block_score.values)
    ax.set_ylabel("block-structure score")
    ax.set_title(
        "Block structure vs training eps\n(band: seed range; bars: 95% jackknife interval; "
        "text: the claim's verdict)",
        fontsize=9,
    )
    _save(fig, paths, ds)


def class_conditional_cka(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Class-conditional cross-layer CKA against training eps: its spread across classes and its
    mean (band: seed range)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _eps_lines(ds, axes[0], ds.class_cka_spread.values, EPS_LINE)
    _verdict_notes(axes[0], ds, "specialisation_class_cka", ds.class_cka_spread.values)
    _eps_lines(ds, axes[1], ds.class_cka_mean.values, EPS_LINE)
    axes[0].set_ylabel("std over classes, mean over layer pairs")
    axes[0].set_title(
        "spread of class-conditional CKA across classes\n(text: the specialisation verdict)",
        fontsize=9,
    )
    axes[1].set_ylabel("mean over classes and layer pairs")
    axes[1].set_title("class-conditional cross-layer CKA", fontsize=9)
    fig.suptitle("Cross-layer similarity within each class (band: seed range)")
    _save(fig, paths, ds)


def _diagonal_panels(
    ds: xr.Dataset,
    paths: Mapping[str, str | Path],
    analysis: str,
    title: str,
    ylabel: str,
    columns: Sequence[tuple[str, dict]] = (("", {}),),
    claim: str | None = None,
) -> None:
    """A row per architecture, a column per (label, comparison coordinates) of `columns`, a line
    per method (and second architecture where it differs): each layer's similarity with the
    layer at the same relative depth, mean over seeds; band: the seed baseline. With `claim`,
    each method's legend entry ends with that claim's verdict."""
    archs = list(dict.fromkeys(ds.model_arch.values.tolist()))
    verdicts = claim_verdicts(ds, claim, _metric(ds)) if claim else {}
    banded = ANALYSES[analysis].seed_baseline if analysis in ANALYSES else False
    fig, axes = plt.subplots(
        len(archs),
        len(columns),
        figsize=(4.5 * len(columns), 3.6 * len(archs)),
        squeeze=False,
        layout="constrained",
    )
    for row, arch in zip(axes, archs, strict=True):
        for ax, (label, coords) in zip(row, columns, strict=True):
            for method in _methods(ds):
                wanted = {"analysis": analysis, "arch": arch, "method_id": method, **coords}
                idx = _select(ds, **wanted)
                for arch_b in dict.fromkeys(ds.arch_b.values[idx].tolist()):
                    sub = idx[ds.arch_b.values[idx] == arch_b]
                    mat, names, _ = _mean_matrix(ds, sub)
                    diag = depth_matched_diagonal(mat)
                    method_name = method_label(method)
                    name = method_name if arch_b == arch else f"{method_name} vs {arch_b}"
                    if (arch, method) in verdicts:
                        name = f"{name}: {verdicts[arch, method]}"
                    depth = np.linspace(0, 1, len(diag))
                    (line,) = ax.plot(depth, diag, marker=".", label=name)
                    if banded:
                        lo, hi = _seed_band(ds, sub, len(diag))
                        _band(ax, depth, lo, hi, name, color=line.get_color(), alpha=0.15, lw=0)
            if banded and not (ds.analysis.values == "seeds").any():
                ax.text(
                    0.02, 0.03, "one seed: no seed baseline", transform=ax.transAxes, fontsize=7
                )
            ax.set_title(f"{arch}\n{label}" if label else arch, fontsize=9)
            ax.set_xlabel("relative depth of layer")
            ax.set_ylabel(ylabel)
            _fit_ylim(ax)
            if ax.lines and banded and (ds.analysis.values == "seeds").any():
                _band_legend(ax, "band: seed baseline")
            elif ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, paths, ds)


def _seed_band(ds: xr.Dataset, idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the range of same-layer similarity between seeds of the configurations that
    comparisons `idx` compare (their `seeds` comparisons, benign, final), widened to the seed
    pairs' jackknife intervals where the summary has them: the seed baseline and its sampling
    uncertainty (a single seed pair still gives a band)."""
    configs = {
        (ds.dataset.values[c], ds[f"arch{s}"].values[c], ds[f"method_id{s}"].values[c])
        for c in idx
        for s in ("", "_b")
    }
    base = [
        c
        for c in _select(ds, analysis="seeds", inputs="benign", checkpoint="final")
        if (ds.dataset.values[c], ds.arch.values[c], ds.method_id.values[c]) in configs
    ]
    if not base:
        return np.full(n, np.nan), np.full(n, np.nan)
    la = int(ds.n_layers_a[base[0]])

    def diagonals(values: xr.DataArray) -> np.ndarray:
        mats = values.isel(comparison=base).values[:, :la, :la]
        return np.diagonal(mats, axis1=1, axis2=2)[:, :n]

    low = high = diagonals(ds["similarity"])
    if "cka_ci_low" in ds:
        low, high = diagonals(ds["cka_ci_low"]), diagonals(ds["cka_ci_high"])
    return np.nanmin(low, axis=0), np.nanmax(high, axis=0)


def robust_vs_standard_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Similarity of each layer of a robust model to the same layer of the standard model."""
    _diagonal_panels(
        ds,
        paths,
        "robust_vs_standard",
        "Robust vs standard model, same layer, benign inputs (legend: the deeper-layers verdict)",
        f"{_metric(ds)}(robust, standard)",
        [("", {"inputs": "benign"})],
        claim="deeper_layers",
    )


def benign_vs_adversarial_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Similarity of each layer on benign vs the model's own PGD inputs, and (where computed) a
    robust model on benign vs on the standard model's adversarial examples."""
    columns = [("own adversarial examples", {"inputs_b": "pgd"})]
    if (ds.inputs_b.values == FROM_STANDARD).any():
        columns.append(("the standard model's adversarial examples", {"inputs_b": FROM_STANDARD}))
    _diagonal_panels(
        ds,
        paths,
        "benign_vs_adversarial",
        "Benign vs adversarial inputs, same layer",
        f"{_metric(ds)}(benign, adversarial)",
        columns,
    )


def transfer_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Robust vs standard model, same layer, on adversarial inputs: each on its own, both on the
    standard model's, both on the robust model's."""
    own = {"analysis": "robust_vs_standard", "inputs": "pgd"}
    columns = [("each on its own adversarial examples", own)]
    for direction, label in (
        ("standard_to_robust", "both on the standard model's adversarial examples"),
        ("robust_to_standard", "both on the robust model's adversarial examples"),
    ):
        inputs = FROM_STANDARD if direction == "standard_to_robust" else "pgd"
        if len(_select(ds, analysis="transfer", inputs=inputs)):
            columns.append((label, {"analysis": "transfer", "inputs": inputs}))
    _diagonal_panels(
        ds,
        paths,
        "transfer",
        "Robust vs standard model on adversarial inputs, same layer",
        f"{_metric(ds)}(robust, standard)",
        columns,
    )


def robust_vs_standard_matrix(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """The released code's three panels per architecture and robust method, on benign and (when
    computed) adversarial inputs: the standard model's cross-layer CKA, the robust model's, and
    the full robust x standard layer matrix (rows: robust layers), mean over seeds."""
    rows = [
        (arch, method)
        for arch in dict.fromkeys(ds.model_arch.values.tolist())
        for method in _methods(ds)
        if len(_select(ds, analysis="robust_vs_standard", arch=arch, method_id=method))
    ]
    kinds = [k for k in ("benign", "pgd") if (ds.inputs.values == k).any()]
    panels = [(k, p) for k in kinds for p in ("standard", "robust", "robust x standard")]
    fig, axes = plt.subplots(
        max(len(rows), 1),
        len(panels),
        figsize=(2.4 * len(panels) + 1.5, 2.5 * max(len(rows), 1) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for r, (arch, method) in enumerate(rows):
        for c, (inputs, panel) in enumerate(panels):
            ax = axes[r, c]
            coords = {"arch": arch, "inputs": inputs}
            if panel == "standard":
                idx = _select(ds, analysis="cross_layer", method_id="standard", **coords)
            elif panel == "robust":
                idx = _select(ds, analysis="cross_layer", method_id=method, **coords)
            else:
                idx = _select(ds, analysis="robust_vs_standard", method_id=method, **coords)
            if len(idx) == 0:
                ax.axis("off")
                continue
            mat, names_a, names_b = _mean_matrix(ds, idx)
            image = _heatmap(ax, mat, names_a, names_b, _metric(ds), vmin=0, vmax=1, cmap="magma")
            layer_ticks(ax, "x", names_b)
            layer_ticks(ax, "y", names_a, labelled=c == 0)
            label = method_label(method)
            who = label if panel == "robust" else panel.replace("robust", label)
            ax.set_title(f"{arch}, {inputs}\n{who}", fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label=f"{_metric(ds)} (mean over seeds)")
    fig.suptitle(
        "Standard, robust and robust x standard layer similarity "
        "(pgd: each model on its own adversarial examples)"
    )
    _save(fig, paths, ds)


def threat_models_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Similarity of each layer of an Linf-trained model to the same layer of the L2-trained one."""
    _diagonal_panels(
        ds,
        paths,
        "threat_models",
        "Linf- vs L2-trained model, same layer",
        f"{_metric(ds)}(Linf, L2)",
    )


def seeds_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Similarity of each layer to the same layer of the same configuration at another seed."""
    _diagonal_panels(
        ds, paths, "seeds", "Same configuration, different seeds", f"{_metric(ds)}(seed i, seed j)"
    )


def width_depth_diagonal(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Similarity of each layer to the layer at the same relative depth of a wider/deeper sibling."""
    _diagonal_panels(
        ds,
        paths,
        "width_depth",
        "Across widths and depths, layers matched by relative depth",
        f"{_metric(ds)}(arch, sibling)",
    )


def epochs_heatmaps(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Per (arch, method): layer x checkpoint CKA to the final model; bottom row: best-final drop."""
    archs = list(dict.fromkeys(ds.model_arch.values.tolist()))
    methods = _methods(ds)
    fig, axes = plt.subplots(
        len(archs) + 1,
        len(methods),
        figsize=(2.8 * len(methods) + 1.5, 2.9 * (len(archs) + 1)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for r, arch in enumerate(archs):
        for c, method in enumerate(methods):
            ax = axes[r, c]
            idx = _select(ds, analysis="epochs", arch=arch, method_id=method)
            epochs = sorted(
                {int(ds.epoch.values[i]) for i in idx if ds.checkpoint.values[i] != "best"}
            )
            if not epochs:
                ax.axis("off")
                continue
            cols = []
            for e in epochs:
                sub = [
                    i
                    for i in idx
                    if int(ds.epoch.values[i]) == e and ds.checkpoint.values[i] != "best"
                ]
                mat, names, _ = _mean_matrix(ds, np.asarray(sub))
                cols.append(np.diagonal(mat))
            image = _heatmap(
                ax,
                np.stack(cols, 1),
                names,
                [f"epoch {e}" for e in epochs],
                f"{_metric(ds)}(epoch, final)",
                vmin=0,
                vmax=1,
                cmap="viridis",
                aspect="auto",
            )
            ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=6)
            layer_ticks(ax, "y", names, labelled=c == 0)
            ax.set_xlabel("epoch", fontsize=7)
            ax.set_title(f"{arch}\n{method_label(method)}", fontsize=7)
    for c, method in enumerate(methods):
        ax = axes[-1, c]
        for arch in archs:
            sel = (ds.model_arch.values == arch) & (ds.model_method_id.values == method)
            rows = ds.best_final_drop.values[sel]
            if np.all(np.isnan(rows)):
                continue
            drop = np.nanmean(rows, axis=0)
            n = int(np.sum(~np.isnan(drop)))
            ax.plot(np.linspace(0, 1, n), drop[:n], marker=".", label=arch)
        ax.set_title(f"best vs final drop\n{method_label(method)}", fontsize=7)
        ax.set_xlabel("relative depth", fontsize=7)
        ax.legend(fontsize=6)
    if image is not None:
        fig.colorbar(
            image, ax=axes[:-1], shrink=0.6, label=f"{_metric(ds)}(epoch, final), same layer"
        )
    _save(fig, paths, ds)


def linear_probe_accuracy(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Linear-probe accuracy of each layer against relative depth, a panel per architecture, a
    line per method (mean over seeds, band: seed range), chance dashed."""
    archs = list(dict.fromkeys(ds.model_arch.values.tolist()))
    verdicts = claim_verdicts(ds, "specialisation_probe", _metric(ds))
    fig, axes = plt.subplots(
        1, len(archs), figsize=(4.5 * len(archs), 3.6), squeeze=False, layout="constrained"
    )
    for ax, arch in zip(axes[0], archs, strict=True):
        for method in _methods(ds):
            sel = (ds.model_arch.values == arch) & (ds.model_method_id.values == method)
            rows = ds.probe_accuracy.values[sel]
            layers = np.flatnonzero(~np.all(np.isnan(rows), axis=0))
            if len(layers) == 0:
                continue
            n = int(np.max(ds.probe_n_layers.values[sel]))  # the architecture's Gram layers
            depth = layers / max(n - 1, 1)
            label = method_label(method)
            if (arch, method) in verdicts:
                label = f"{label}: {verdicts[arch, method]}"
            (line,) = ax.plot(depth, np.nanmean(rows[:, layers], 0), marker=".", label=label)
            lo, hi = np.nanmin(rows[:, layers], 0), np.nanmax(rows[:, layers], 0)
            _band(ax, depth, lo, hi, line.get_label(), color=line.get_color(), alpha=0.15, lw=0)
        chance = np.nanmean(ds.probe_chance.values[ds.model_arch.values == arch])
        _fit_ylim(ax)
        if chance >= ax.get_ylim()[0]:
            ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
        else:  # far below the accuracies: named, not drawn (it would flatten the curves)
            ax.text(0.02, 0.03, f"chance: {chance:.2f}", transform=ax.transAxes, fontsize=7)
        ax.set_title(arch)
        ax.set_xlabel("relative depth of layer")
        ax.set_ylabel("linear-probe accuracy (k-fold)")
        if len(set(ds.model_seed.values.tolist())) > 1:
            _band_legend(ax, "band: seed range")
        else:
            ax.legend(fontsize=7)
    fig.suptitle(
        "Linear probes: class read out from each layer "
        "(band: seed range; legend: the specialisation verdict)"
    )
    _save(fig, paths, ds)


def accuracy_vs_eps(ds: xr.Dataset, paths: Mapping[str, str | Path]) -> None:
    """Test clean, PGD and (when computed) AutoAttack accuracy against training eps (band: seed
    range); AutoAttack's panel also draws PGD on the same examples, dashed."""
    panels = 3 if "autoattack_acc" in ds else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), sharey=True)
    _eps_lines(ds, axes[0], ds.clean_acc.values, EPS_LINE)
    _eps_lines(ds, axes[1], ds.robust_acc.values, EPS_LINE)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("clean")
    axes[1].set_title("robust (evaluation PGD attack)")
    if panels == 3:
        ax = axes[2]
        _eps_lines(ds, ax, ds.autoattack_acc.values, f"{EPS_LINE} AutoAttack")
        drawn = len(ax.get_lines())
        ax.set_prop_cycle(None)  # PGD in the colour of the same configuration's AutoAttack
        _eps_lines(ds, ax, ds.autoattack_pgd_acc.values, f"{EPS_LINE} PGD", band=False)
        for line in ax.get_lines()[drawn:]:
            line.set_linestyle("--")
        ax.legend(fontsize=6)
        flagged = int(np.nansum(ds.gradient_masking.values))
        ax.set_title(
            f"AutoAttack (solid) vs PGD (dashed), same examples\nflagged: {flagged}", fontsize=9
        )
    _save(fig, paths, ds)


FIGURES: dict[str, Callable[[xr.Dataset, Mapping[str, str | Path]], None]] = {
    draw.__name__: draw
    for draw in (
        cross_layer_heatmaps,
        block_score_vs_eps,
        class_conditional_cka,
        robust_vs_standard_diagonal,
        robust_vs_standard_matrix,
        transfer_diagonal,
        benign_vs_adversarial_diagonal,
        epochs_heatmaps,
        threat_models_diagonal,
        seeds_diagonal,
        width_depth_diagonal,
        linear_probe_accuracy,
        accuracy_vs_eps,
    )
}
