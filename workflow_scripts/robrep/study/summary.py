"""The study's summary: every comparison stacked into one xarray Dataset, plus per-model summaries.

`aggregate` stacks comparisons along a `comparison` dimension (coordinates of both stores, read
from each comparison's attributes) and adds, along a `model` dimension, each analysis's summaries
(`analyses.ANALYSES[...].summarise`) and the accuracies of every model's `metrics.json` (which also
gives the model's coordinates). What the comparisons' similarity decides is built once per
minibatch measure and held along a `measure` dimension. Nothing is re-derived from the config or
parsed from ids.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from robrep.ids import ModelKey, method_coords
from robrep.io.checksums import read_json
from robrep.io.xrio import read_netcdf
from robrep.similarity.result import MINIBATCH_CKA
from robrep.study.analyses import ANALYSES
from robrep.study.variables import Variable

# Per layer pair variables of a comparison stacked when every comparison has them: the permutation
# null's upper percentile and minibatch CKA's jackknife interval.
_CMP = "robrep.study.compare.compare_stores"
# The summary's variables that no analysis declares: each comparison's own values, stacked, and
# the study-wide ones (seed baselines, probes, AutoAttack, accuracies).
STUDY_VARIABLES = {
    "similarity": Variable(
        "minibatch similarity",
        "each minibatch measure (measure: linear CKA, Nguyen et al. 2021, and the others of "
        "similarity.measures) of every Gram-layer pair of the two stores, from the stores' Gram "
        "statistics over every batch of every pass",
        "robrep.similarity.minibatch.minibatch_measure_grams",
    ),
    "full_similarity": Variable(
        "full-data similarity",
        "the full-data metrics (full_metric) of every feature-layer pair, on the raw features",
        "robrep.similarity.full.full_data_similarity",
    ),
    "cka_ci_low": Variable(
        "minibatch CKA, interval low end",
        "low end of the 95% jackknife interval over minibatches (similarity.intervals)",
        _CMP,
    ),
    "cka_ci_high": Variable(
        "minibatch CKA, interval high end",
        "high end of the 95% jackknife interval over minibatches (similarity.intervals)",
        _CMP,
    ),
    "cka_null_upper": Variable(
        "permutation null, 95th percentile",
        "95th percentile of minibatch CKA with side b's examples shuffled within each batch: "
        "values at or below it are indistinguishable from unrelated examples",
        "robrep.similarity.views.minibatch_cka_null",
    ),
    "cka_by_class": Variable(
        "class-conditional minibatch CKA",
        "minibatch CKA on each class's examples of every batch alone",
        "robrep.similarity.views.minibatch_cka_by_class",
    ),
    "block_score_seed_range": Variable(
        "block-structure score, seed range",
        "max - min of the block score over the seeds of the model's configuration (NaN with one "
        "seed)",
        "robrep.study.summary.seed_range",
    ),
    "seed_baseline": Variable(
        "seed baseline",
        "mean same-layer CKA of the seed pairs of the configurations a comparison compares",
        "robrep.study.summary.seed_baselines",
    ),
    "seed_effect": Variable(
        "effect beyond the seed baseline",
        "the comparison's same-layer CKA minus its seed baseline",
        "robrep.study.summary.seed_baselines",
    ),
    "seed_effect_low": Variable(
        "effect beyond the seed baseline, low end",
        "the comparison's interval low end minus the highest seed pair's high end",
        "robrep.study.summary.seed_baselines",
    ),
    "seed_effect_high": Variable(
        "effect beyond the seed baseline, high end",
        "the comparison's interval high end minus the lowest seed pair's low end",
        "robrep.study.summary.seed_baselines",
    ),
    "probe_accuracy": Variable(
        "linear-probe accuracy",
        "cross-validated accuracy of a ridge classifier on each feature layer (NaN elsewhere)",
        "robrep.study.probes.probe_store",
        per_layer=True,
    ),
    "probe_chance": Variable(
        "linear-probe chance level", "the majority-class rate", "robrep.study.probes.probe_store"
    ),
    "probe_n_layers": Variable(
        "layers of the probed model",
        "the model's Gram layers (the depth scale of probe_accuracy)",
        "robrep.study.summary.probe_summary",
    ),
    "autoattack_acc": Variable(
        "AutoAttack accuracy",
        "accuracy under AutoAttack (pyautoattack) on the evaluation subset",
        "robrep.study.summary.autoattack_summary",
    ),
    "autoattack_clean_acc": Variable(
        "clean accuracy on the AutoAttack subset",
        "clean accuracy on the examples AutoAttack attacks",
        "robrep.study.summary.autoattack_summary",
    ),
    "autoattack_pgd_acc": Variable(
        "PGD accuracy on the AutoAttack subset",
        "evaluation-PGD accuracy on the examples AutoAttack attacks",
        "robrep.study.summary.autoattack_summary",
    ),
    "gradient_masking": Variable(
        "gradient-masking flag",
        "1 when AutoAttack accuracy is more than evaluation.autoattack.masking_gap below PGD "
        "accuracy on the same examples",
        "robrep.study.summary.gradient_masking",
    ),
    "clean_acc": Variable(
        "clean test accuracy",
        "accuracy of the final weights on the test split",
        "robrep.study.summary.model_summaries",
    ),
    "robust_acc": Variable(
        "PGD test accuracy",
        "accuracy of the final weights under the evaluation PGD attack on the test split",
        "robrep.study.summary.model_summaries",
    ),
}
PAIR_VARIABLES = ("cka_null_upper", "cka_ci_low", "cka_ci_high")
MEASURED = ("measure", "layer_a", "layer_b")  # a comparison's similarity: per minibatch measure
# Summary variables that no minibatch measure changes: held once, not along `measure`.
MEASURE_FREE = ("full_similarity", "clean_acc", "robust_acc")
_SIDE_COORDS = (
    "arch",
    "method_id",
    "seed",
    "checkpoint",
    "epoch",
    "inputs",
    "method",
    "norm",
    "eps",
)


def aggregate(
    comparison_files: Sequence[str | Path],
    metrics_files: Sequence[str | Path],
    attrs: Mapping[str, Any] | None = None,
    probe_files: Sequence[str | Path] = (),
    autoattack_files: Sequence[str | Path] = (),
    masking_gap: float = 0.1,
) -> tuple[xr.Dataset, list[dict[str, Any]]]:
    """Stack comparisons along `comparison`, add per-model summaries, seed baselines and the
    linear probes (`probe_files`, one per model) and AutoAttack (`autoattack_files`, one per
    model; a model `masking_gap` or more below its PGD accuracy is flagged and warned about);
    also return accuracy rows.

    `metrics_files` are the models' metrics.json, in model order. Every summary built on the
    comparisons' similarity is built once per minibatch measure (`measure_view`) and held along
    `measure`.
    """
    parts = [read_netcdf(f) for f in comparison_files]
    if not parts:
        raise ValueError("no comparisons to aggregate")
    needed = [f"{key}_{side}" for key in _SIDE_COORDS for side in "ab"]
    for path, part in zip(comparison_files, parts, strict=True):
        missing = [k for k in ("analysis", "dataset_a", *needed) if k not in part.attrs]
        if missing:
            raise ValueError(
                f"comparison {path} lacks the attributes {missing} (written by an older robrep?); "
                f"recompute it: snakemake --forcerun extract (stores lack them too)"
            )
        if "similarity" not in part or part["similarity"].dims != MEASURED:
            raise ValueError(
                f"comparison {path} lacks similarity{MEASURED}, the layout of this robrep "
                f"(written by an older one?); recompute it: snakemake --cores all "
                f"--forcerun similarity"
            )
        if list(part.measure.values) != list(parts[0].measure.values):
            raise ValueError(
                f"comparison {path} holds the measures {list(part.measure.values)}, "
                f"{comparison_files[0]} {list(parts[0].measure.values)}: written under other "
                f"similarity.metrics; recompute: snakemake --cores all --forcerun similarity"
            )
    models = [read_json(f) for f in metrics_files]
    per_measure = []
    for measure in parts[0].measure.values:
        views = [measure_view(part, str(measure)) for part in parts]
        stacked = _stack(views)
        summary, accuracy = model_summaries(stacked, models, views)
        summary["block_score_seed_range"] = ("model", seed_range(summary, "block_score"))
        per_measure.append(xr.merge([stacked, summary, seed_baselines(stacked)]))
    ds = _along_measures(per_measure, list(parts[0].measure.values))
    if probe_files:
        ds = xr.merge([ds, probe_summary(ds, [read_netcdf(f) for f in probe_files])])
    if autoattack_files:
        robust = autoattack_summary(accuracy, [read_json(f) for f in autoattack_files], masking_gap)
        ds = xr.merge([ds, robust])
    ds.attrs.update(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (attrs or {}).items()}
    )
    return describe(ds), accuracy


def measure_view(part: xr.Dataset, measure: str) -> xr.Dataset:
    """One comparison as one minibatch measure reads it: its variables along `measure` taken at
    `measure` (so every summary and figure is built alike for each measure); class-conditional
    CKA, which only linear CKA has, kept for linear CKA alone."""
    view = part.sel(measure=measure, drop=True)
    if measure != MINIBATCH_CKA and "cka_by_class" in view:
        view = view.drop_vars(["cka_by_class", "class"])
    return view


def _along_measures(per_measure: Sequence[xr.Dataset], measures: Sequence[str]) -> xr.Dataset:
    """The per-measure summaries stacked along `measure`; what no measure changes (the
    full-data metrics, accuracies, class-conditional CKA) once, from linear CKA's."""
    first = per_measure[0]
    free = [v for v in first.data_vars if v in MEASURE_FREE or "class" in first[v].dims]
    stacked = xr.concat(
        [part.drop_vars(free, errors="ignore") for part in per_measure],
        dim="measure",
        coords="minimal",
        compat="override",
        join="exact",
    )
    return xr.merge([stacked.assign_coords(measure=list(measures)), first[free]])


def describe(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with every data variable's attributes (`long_name`, `description`, `computed_by`, and
    `analysis` for an analysis's summaries) from its one declaration: the analysis registry or
    `STUDY_VARIABLES`. An undeclared variable is an error, so none reaches a figure untraced."""
    declared = {
        name: variable.attrs(analysis.name)
        for analysis in ANALYSES.values()
        for name, variable in analysis.summaries.items()
    }
    declared.update({name: variable.attrs() for name, variable in STUDY_VARIABLES.items()})
    missing = sorted(set(ds.data_vars) - set(declared))
    if missing:
        raise ValueError(
            f"summary variables {missing} are declared nowhere; add them to their analysis's "
            f"summaries or to robrep.study.summary.STUDY_VARIABLES"
        )
    for name in ds.data_vars:
        ds[name].attrs.update(declared[name])
    return ds


def _stack(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """One Dataset `similarity(comparison, layer_a, layer_b)` (minibatch CKA) (and `full_similarity` over
    the feature layers), NaN-padded to the largest layer counts, with each comparison's
    coordinates (side b's with suffix `_b`)."""
    n_a = max(p.sizes["layer_a"] for p in parts)
    n_b = max(p.sizes["layer_b"] for p in parts)
    sim = np.full((len(parts), n_a, n_b), np.nan)
    names_a = np.full((len(parts), n_a), "", dtype=object)
    names_b = np.full((len(parts), n_b), "", dtype=object)
    coords: dict[str, list] = {}
    for c, part in enumerate(parts):
        la, lb = part.sizes["layer_a"], part.sizes["layer_b"]
        sim[c, :la, :lb] = part["similarity"].values
        names_a[c, :la] = part.layer_a.values
        names_b[c, :lb] = part.layer_b.values
        row = {
            "analysis": part.attrs["analysis"],
            "dataset": part.attrs["dataset_a"],
            "n_layers_a": la,
            "n_layers_b": lb,
        }
        for side, suffix in (("a", ""), ("b", "_b")):
            for key in _SIDE_COORDS:
                row[f"{key}{suffix}"] = part.attrs[f"{key}_{side}"]
        for key, value in row.items():
            coords.setdefault(key, []).append(value)
    for key in ("seed", "epoch", "seed_b", "epoch_b"):
        coords[key] = [int(v) for v in coords[key]]
    for key in ("eps", "eps_b"):
        coords[key] = [float(v) for v in coords[key]]
    data_vars = {"similarity": (("comparison", "layer_a", "layer_b"), sim)}
    for name in PAIR_VARIABLES:
        if all(name in p for p in parts):
            stacked = np.full((len(parts), n_a, n_b), np.nan)
            for c, part in enumerate(parts):
                stacked[c, : part.sizes["layer_a"], : part.sizes["layer_b"]] = part[name].values
            data_vars[name] = (("comparison", "layer_a", "layer_b"), stacked)
    extra_coords = {}
    classes = sorted({int(k) for p in parts if "cka_by_class" in p for k in p["class"].values})
    if classes:  # class-conditional CKA where a comparison has it, NaN elsewhere
        by_class = np.full((len(parts), len(classes), n_a, n_b), np.nan)
        for c, part in enumerate(parts):
            if "cka_by_class" in part:
                rows = [classes.index(int(k)) for k in part["class"].values]
                by_class[c, rows, : part.sizes["layer_a"], : part.sizes["layer_b"]] = part[
                    "cka_by_class"
                ].values
        data_vars["cka_by_class"] = (("comparison", "class", "layer_a", "layer_b"), by_class)
        extra_coords["class"] = classes
    if "full_similarity" in parts[0]:
        data_vars["full_similarity"], full_coords = _stack_full(parts)
        extra_coords.update(full_coords)
    return xr.Dataset(
        data_vars,
        coords={
            **extra_coords,
            "comparison": np.arange(len(parts)),
            "layer_a": np.arange(n_a),
            "layer_b": np.arange(n_b),
            "layer_name_a": (("comparison", "layer_a"), names_a.astype(str)),
            "layer_name_b": (("comparison", "layer_b"), names_b.astype(str)),
            **{k: ("comparison", np.asarray(v)) for k, v in coords.items()},
        },
    )


def _stack_full(parts: Sequence[xr.Dataset]) -> tuple[tuple, dict[str, Any]]:
    """`full_similarity(comparison, full_metric, feature_a, feature_b)`, NaN-padded, with the
    feature layers' names and counts per comparison."""
    n_a = max(p.sizes["feature_a"] for p in parts)
    n_b = max(p.sizes["feature_b"] for p in parts)
    metrics = list(parts[0].full_metric.values)
    full = np.full((len(parts), len(metrics), n_a, n_b), np.nan)
    names = {
        side: np.full((len(parts), n), "", dtype=object) for side, n in (("a", n_a), ("b", n_b))
    }
    for c, part in enumerate(parts):
        fa, fb = part.sizes["feature_a"], part.sizes["feature_b"]
        full[c, :, :fa, :fb] = part["full_similarity"].sel(full_metric=metrics).values
        names["a"][c, :fa] = part.feature_a.values
        names["b"][c, :fb] = part.feature_b.values
    coords = {
        "full_metric": metrics,
        "feature_a": np.arange(n_a),
        "feature_b": np.arange(n_b),
        **{
            f"feature_name_{side}": (("comparison", f"feature_{side}"), v.astype(str))
            for side, v in names.items()
        },
        **{
            f"n_features_{side}": ("comparison", [p.sizes[f"feature_{side}"] for p in parts])
            for side in "ab"
        },
    }
    return (("comparison", "full_metric", "feature_a", "feature_b"), full), coords


def _matrix(ds: xr.Dataset, c: int) -> np.ndarray:
    la, lb = int(ds.n_layers_a[c]), int(ds.n_layers_b[c])
    return ds["similarity"].isel(comparison=c).values[:la, :lb]


def model_summaries(
    ds: xr.Dataset,
    models: Sequence[Mapping[str, Any]],
    parts: Sequence[xr.Dataset] | None = None,
) -> tuple[xr.Dataset, list[dict[str, Any]]]:
    """Every analysis's per-model summaries (NaN where a model has none) and the accuracies, from
    the comparisons in `ds` (and, given, each comparison's own Dataset `parts[c]`, for summaries
    that need its per-batch terms) and the models' parsed metrics.json."""
    keys = [ModelKey.of(m["model"]) for m in models]
    index = {key: i for i, key in enumerate(keys)}
    n_layer = ds.sizes["layer_a"]
    values = {
        name: np.full((len(keys), n_layer) if variable.per_layer else len(keys), np.nan)
        for analysis in ANALYSES.values()
        for name, variable in analysis.summaries.items()
    }
    for c in range(ds.sizes["comparison"]):
        comparison = {
            k: ds[k].values[c].item() for k in ("analysis", "checkpoint", "inputs", "inputs_b")
        }
        comparison["part"] = parts[c] if parts is not None else None
        key = ModelKey(
            str(ds.dataset.values[c]),
            str(ds.arch.values[c]),
            str(ds.method_id.values[c]),
            int(ds.seed.values[c]),
        )
        if key not in index:
            continue
        analysis = ANALYSES[comparison["analysis"]]
        for name, value in analysis.summarise(_matrix(ds, c), comparison).items():
            if analysis.summaries[name].per_layer:
                values[name][index[key], : len(value)] = value
            else:
                values[name][index[key]] = value
    accuracy = []
    coords: dict[str, list] = {}
    for key, metrics in zip(keys, models, strict=True):
        row = {
            "model_id": key.id,
            "model_dataset": key.dataset,
            "model_arch": key.arch,
            "model_method_id": key.method_id,
            **{f"model_{k}": v for k, v in method_coords(metrics["model"]["method"]).items()},
            "model_seed": key.seed,
            # An imported model's entry name ("" for a model trained here).
            "model_external": (metrics.get("external") or {}).get("name", ""),
        }
        for k, v in row.items():
            coords.setdefault(k, []).append(v)
        source = metrics.get("external") or {}
        accuracy.append(
            {
                **{k.removeprefix("model_"): v for k, v in row.items()},
                "clean_acc": metrics["test"]["clean_acc"],
                "robust_acc": metrics["test"]["robust_acc"],
                "best_epoch": metrics["best"]["epoch"],
                "best_val_robust_acc": metrics["best"]["val_robust_acc"],
                "attack": json.dumps(metrics["test"]["attack"]),
                "external_checkpoint": source.get("checkpoint", ""),
                "external_sha256": source.get("sha256", ""),
            }
        )
    data_vars = {
        name: (("model", "layer_a") if v.ndim == 2 else "model", v) for name, v in values.items()
    }
    data_vars["clean_acc"] = ("model", np.array([row["clean_acc"] for row in accuracy]))
    data_vars["robust_acc"] = ("model", np.array([row["robust_acc"] for row in accuracy]))
    summary = xr.Dataset(
        data_vars,
        coords={"model": np.arange(len(keys)), **{k: ("model", v) for k, v in coords.items()}},
    )
    return summary, accuracy


def seed_range(summary: xr.Dataset, name: str) -> np.ndarray:
    """Per model, max - min of the per-model scalar `name` over the seeds of its configuration
    (dataset, arch, method); NaN with one seed."""
    config = list(
        zip(
            summary.model_dataset.values,
            summary.model_arch.values,
            summary.model_method_id.values,
            strict=True,
        )
    )
    values = summary[name].values
    return np.array(
        [
            finite_range(
                np.array([v for v, other in zip(values, config, strict=True) if other == key])
            )
            for key in config
        ]
    )


def finite_range(values: np.ndarray) -> float:
    """max - min of the finite `values` (a quantity over seeds); NaN with fewer than two."""
    finite = values[np.isfinite(values)]
    return float(np.ptp(finite)) if len(finite) >= 2 else float("nan")


def _diagonals(ds: xr.Dataset, name: str, idx: Sequence[int]) -> np.ndarray:
    """(len(idx), layer_a) same-layer values of `name` (NaN-padded) for comparisons `idx`."""
    values = ds[name].isel(comparison=list(idx)).values
    n = min(values.shape[1:])
    out = np.full(values.shape[:2], np.nan)
    out[:, :n] = np.diagonal(values, axis1=1, axis2=2)
    return out


def seed_baselines(ds: xr.Dataset) -> xr.Dataset:
    """Each layer's value in every comparison of a `seed_baseline` analysis set against how much
    two seeds of the configurations it compares differ (the `seeds` comparisons of side a's and
    side b's dataset/arch/method, benign, final).

    `seed_baseline`: the mean same-layer similarity of those seed pairs; `seed_effect`: this
    comparison's value minus it; `seed_effect_low/high`: an interval for the effect from the
    jackknife intervals of this comparison and of every seed pair (this comparison's low end
    minus the highest baseline's high end, and the reverse), so it covers both the minibatch
    sampling and the spread across seed pairs. NaN without seed pairs (one seed) or for other
    analyses.
    """
    shape = (ds.sizes["comparison"], ds.sizes["layer_a"])
    out = {k: np.full(shape, np.nan) for k in ("baseline", "effect", "effect_low", "effect_high")}
    analysis = ds.analysis.values
    config = {
        side: list(
            zip(
                ds.dataset.values,
                ds[f"arch{sfx}"].values,
                ds[f"method_id{sfx}"].values,
                strict=True,
            )
        )
        for side, sfx in (("a", ""), ("b", "_b"))
    }
    seeds = [
        c
        for c in range(shape[0])
        if analysis[c] == "seeds"
        and ds.inputs.values[c] == "benign"
        and ds.checkpoint.values[c] == "final"
    ]
    has_ci = "cka_ci_low" in ds
    for c in range(shape[0]):
        name = str(analysis[c])
        if name not in ANALYSES or not ANALYSES[name].seed_baseline:
            continue
        base = [s for s in seeds if config["a"][s] in (config["a"][c], config["b"][c])]
        if not base:
            continue
        value = _diagonals(ds, "similarity", [c])[0]
        baseline = _diagonals(ds, "similarity", base)
        low, high = (
            (
                _diagonals(ds, "cka_ci_low", [c])[0],
                _diagonals(ds, "cka_ci_high", [c])[0],
            )
            if has_ci
            else (value, value)
        )
        base_low, base_high = (
            (_diagonals(ds, "cka_ci_low", base), _diagonals(ds, "cka_ci_high", base))
            if has_ci
            else (baseline, baseline)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["baseline"][c] = np.nanmean(baseline, axis=0)
            out["effect_low"][c] = low - np.nanmax(base_high, axis=0)
            out["effect_high"][c] = high - np.nanmin(base_low, axis=0)
        out["effect"][c] = value - out["baseline"][c]
    return xr.Dataset(
        {
            "seed_baseline": (("comparison", "layer_a"), out["baseline"]),
            "seed_effect": (("comparison", "layer_a"), out["effect"]),
            "seed_effect_low": (("comparison", "layer_a"), out["effect_low"]),
            "seed_effect_high": (("comparison", "layer_a"), out["effect_high"]),
        },
        attrs={},
    )


def probe_summary(ds: xr.Dataset, probes: Sequence[xr.Dataset]) -> xr.Dataset:
    """Each model's linear-probe accuracy along its layers (`probe_accuracy(model, layer_a)`,
    NaN for layers without features), its chance level and its number of Gram layers (relative
    depth, whatever the analyses), from `probes.probe_store` results."""
    index = {
        (d, a, m, int(s)): i
        for i, (d, a, m, s) in enumerate(
            zip(
                ds.model_dataset.values,
                ds.model_arch.values,
                ds.model_method_id.values,
                ds.model_seed.values,
                strict=True,
            )
        )
    }
    accuracy = np.full((ds.sizes["model"], ds.sizes["layer_a"]), np.nan)
    chance = np.full(ds.sizes["model"], np.nan)
    n_layers = np.zeros(ds.sizes["model"], int)
    for part in probes:
        key = tuple(part.attrs[k] for k in ("dataset", "arch", "method_id")) + (
            int(part.attrs["seed"]),
        )
        if key not in index:
            raise ValueError(f"linear probes of {part.attrs.get('store')} match no model")
        row = index[key]
        layers = part.layer_index.values
        accuracy[row, layers[layers >= 0]] = part.probe_accuracy.values[layers >= 0]
        chance[row] = part.attrs["chance"]
        n_layers[row] = int(part.attrs.get("n_layers", ds.sizes["layer_a"]))
    return xr.Dataset(
        {
            "probe_accuracy": (("model", "layer_a"), accuracy),
            "probe_chance": ("model", chance),
            "probe_n_layers": ("model", n_layers),  # the model's Gram layers: depth of a layer
        }
    )


def autoattack_summary(
    accuracy: list[dict[str, Any]], results: Sequence[Mapping[str, Any]], masking_gap: float
) -> xr.Dataset:
    """Each model's AutoAttack result (`robustness.evaluate_robustness`) added to its accuracy row
    (in place) and as variables along `model`: `autoattack_acc` and, on the same examples,
    `autoattack_clean_acc`, `autoattack_pgd_acc`, and `gradient_masking` (1 when AutoAttack is
    more than `masking_gap` below PGD; warned about)."""
    by_model = {r["model"]: r for r in results}
    names = ("autoattack_acc", "autoattack_clean_acc", "autoattack_pgd_acc", "gradient_masking")
    values = {name: np.full(len(accuracy), np.nan) for name in names}
    for i, row in enumerate(accuracy):
        result = by_model.get(row["id"])
        if result is None:
            raise ValueError(f"no AutoAttack result for model {row['id']}")
        flagged = gradient_masking(result["pgd_acc"], result["autoattack_acc"], masking_gap)
        if flagged:
            warnings.warn(
                f"model {row['id']}: AutoAttack accuracy {result['autoattack_acc']:.3f} is more "
                f"than {masking_gap} below PGD accuracy {result['pgd_acc']:.3f} on the same "
                f"{result['n_examples']} examples: its PGD robustness is not to be trusted "
                f"(gradient masking or a too weak PGD)",
                stacklevel=2,
            )
        row.update(
            autoattack_acc=result["autoattack_acc"],
            autoattack_clean_acc=result["clean_acc"],
            autoattack_pgd_acc=result["pgd_acc"],
            autoattack_n_examples=result["n_examples"],
            gradient_masking=int(flagged),
            autoattack=json.dumps(result["autoattack"]),
        )
        for name in names:
            values[name][i] = row[name]
    return xr.Dataset({name: ("model", v) for name, v in values.items()})


def gradient_masking(pgd_acc: float, autoattack_acc: float, gap: float) -> bool:
    """AutoAttack accuracy more than `gap` below PGD accuracy: the PGD figure is not to be
    trusted (gradient masking or a too weak PGD). Accuracies are counts over n, so a gap of
    exactly `gap` is not flagged whatever the float rounding."""
    return bool(pgd_acc - autoattack_acc > gap + 1e-9)
