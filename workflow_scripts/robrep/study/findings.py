"""The paper's three claims, each tested against the seed baseline on the summary Dataset.

Cianfarani et al. (NeurIPS 2022) claim that (1) robust networks lose the block structure of
cross-layer similarity, (2) robust and standard networks differ mostly in deeper layers, and
(3) robust representations are less specialised. For every robust configuration (dataset, arch,
method) against the standard one, `paper_claims` measures each claim's quantity and says whether
the robust-minus-standard difference goes the claimed way beyond what retraining with another
seed changes and beyond its minibatch interval (`exceeds`), the other way beyond both
(`opposite`), beyond the seed range but not clear of its interval (`inconclusive`), or not beyond
the seed range (`within seed noise`). Every verdict carries its `margin`: how far the evidence
clears the nearer of the two yardsticks (positive for a side, at most 0 otherwise), so a verdict a
rerun on another machine might flip is visible as a margin near 0. With one seed there is no
yardstick: `no seed baseline`. The claims on similarity are read under each
minibatch measure the comparisons hold (a `measure` column), so whether a claim survives a change
of measure is one row per claim and measure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr

from robrep.study.summary import finite_range
from robrep.study.verdicts import EXCEEDS, INCONCLUSIVE, NO_BASELINE, OPPOSITE, WITHIN

DEEP = 0.5  # layers at relative depth >= DEEP are "deeper", the others "shallower"


def _nan(fn, *args, **kw) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def _verdict(
    difference: float, noise: float, claimed_sign: int, low: float = np.nan, high: float = np.nan
) -> tuple[str, float]:
    """The verdict and its margin (`claimed_sign` -1: the claim says robust is lower). The margin
    is |difference| - seed noise and, where an interval exists, at most its distance from 0 on the
    difference's side: a side needs both positive."""
    if not np.isfinite(noise):
        return NO_BASELINE, float("nan")
    if not np.isfinite(difference):
        return INCONCLUSIVE, float("nan")
    margin = abs(difference) - noise
    if margin <= 0:
        return WITHIN, float(margin)
    if np.isfinite(low) and np.isfinite(high):
        clear = low if difference > 0 else -high
        margin = min(margin, clear)
        if clear <= 0:
            return INCONCLUSIVE, float(margin)
    return (EXCEEDS if np.sign(difference) == claimed_sign else OPPOSITE), float(margin)


def _configs(ds: xr.Dataset) -> Iterator[tuple[str, str, str, np.ndarray, np.ndarray]]:
    """(dataset, arch, robust method id, its model rows, the standard model rows)."""
    for dataset in dict.fromkeys(ds.model_dataset.values.tolist()):
        for arch in dict.fromkeys(ds.model_arch.values.tolist()):
            here = (ds.model_dataset.values == dataset) & (ds.model_arch.values == arch)
            standard = np.flatnonzero(here & (ds.model_method_id.values == "standard"))
            if len(standard) == 0:
                continue
            for method in dict.fromkeys(ds.model_method_id.values[here].tolist()):
                if method != "standard":
                    robust = np.flatnonzero(here & (ds.model_method_id.values == method))
                    yield dataset, arch, method, robust, standard


def _seed_claim(
    r: np.ndarray, s: np.ndarray, claimed_sign: int, low: float = np.nan, high: float = np.nan
) -> dict:
    """The row of a per-model quantity, robust models' values `r` against standard ones' `s`:
    means, difference, the larger seed range as noise, the difference's interval where one
    exists, the verdict and its margin."""
    difference = float(_nan(np.nanmean, r) - _nan(np.nanmean, s))
    noise = max(finite_range(r), finite_range(s))
    verdict, margin = _verdict(difference, noise, claimed_sign, low, high)
    return {
        "robust": float(_nan(np.nanmean, r)),
        "standard": float(_nan(np.nanmean, s)),
        "difference": difference,
        "seed_noise": noise,
        "low": low,
        "high": high,
        "margin": margin,
        "verdict": verdict,
    }


def _scalar_claim(ds, name, robust, standard, claimed_sign, low=None, high=None) -> dict:
    """`_seed_claim` of a summary variable, its interval from the models' jackknife intervals
    (`low`/`high` variables; widest over the seeds) where they exist."""
    bounds = (float("nan"), float("nan"))
    if low is not None and high is not None:
        bounds = (
            float(
                _nan(np.nanmin, ds[low].values[robust]) - _nan(np.nanmax, ds[high].values[standard])
            ),
            float(
                _nan(np.nanmax, ds[high].values[robust]) - _nan(np.nanmin, ds[low].values[standard])
            ),
        )
    return _seed_claim(ds[name].values[robust], ds[name].values[standard], claimed_sign, *bounds)


def _deep_layers(n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    return np.flatnonzero(depth >= DEEP), np.flatnonzero(depth < DEEP)


def _layer_claim(ds, dataset, arch, method) -> dict | None:
    """Claim 2 on `robust_vs_standard`: the seed effect (robust-vs-standard CKA minus the seed
    baseline) over the deeper layers, with its interval (jackknife and seed pairs)."""
    idx = np.flatnonzero(
        (ds.analysis.values == "robust_vs_standard")
        & (ds.inputs.values == "benign")
        & (ds.dataset.values == dataset)
        & (ds.arch.values == arch)
        & (ds.method_id.values == method)
    )
    if len(idx) == 0:
        return None
    deep, shallow = _deep_layers(int(ds.n_layers_a.values[idx[0]]))
    effect = ds.seed_effect.values[idx]
    deep_effect = float(_nan(np.nanmean, effect[:, deep]))
    shallow_effect = float(_nan(np.nanmean, effect[:, shallow]))
    high = float(_nan(np.nanmax, _nan(np.nanmean, ds.seed_effect_high.values[idx][:, deep], 1)))
    low = float(_nan(np.nanmin, _nan(np.nanmean, ds.seed_effect_low.values[idx][:, deep], 1)))
    # The interval holds the seed pairs' spread and the jackknife of both sides: clear of 0, the
    # deeper layers differ beyond the noise; the claim also needs them to differ more than the
    # shallower ones, or it is neither the claim nor its opposite.
    margin = max(low, -high)
    if not np.isfinite(deep_effect):
        verdict, margin = NO_BASELINE, float("nan")
    elif high < 0:
        verdict = EXCEEDS if deep_effect < shallow_effect else INCONCLUSIVE
        margin = min(-high, shallow_effect - deep_effect)
    elif low > 0:
        verdict = OPPOSITE
    else:
        verdict = WITHIN
    cka = ds.similarity.values[idx]
    diag = np.diagonal(cka, axis1=1, axis2=2)
    return {
        "robust": float(_nan(np.nanmean, diag[:, deep])),
        "standard": float(_nan(np.nanmean, ds.seed_baseline.values[idx][:, deep])),
        "difference": deep_effect,
        "seed_noise": float("nan"),
        "low": low,
        "high": high,
        "shallower_difference": shallow_effect,
        "margin": float(margin),
        "verdict": verdict,
    }


def _measured(ds: xr.Dataset, name: str, rows: np.ndarray) -> bool:
    """A claim needs its quantity: present and finite for some of the models (its analysis ran)."""
    return name in ds and bool(np.isfinite(ds[name].values[rows]).any())


def _deep_probe(ds: xr.Dataset, rows: np.ndarray) -> np.ndarray:
    """Per model of `rows`, mean probe accuracy over its probed layers at relative depth >= DEEP
    (depth among the model's `probe_n_layers` Gram layers)."""
    out = []
    for r in rows:
        probed = np.flatnonzero(np.isfinite(ds.probe_accuracy.values[r]))
        deep = np.intersect1d(probed, _deep_layers(int(ds.probe_n_layers.values[r]))[0])
        out.append(float(_nan(np.nanmean, ds.probe_accuracy.values[r, deep])))
    return np.array(out)


COLUMNS = (
    "claim",
    "measure",
    "dataset",
    "arch",
    "method_id",
    "robust",
    "standard",
    "difference",
    "seed_noise",
    "low",
    "high",
    "shallower_difference",
    "margin",
    "verdict",
)
CLAIMS = {
    "block_structure": "robust networks lose block structure: block score, robust - standard",
    "deeper_layers": (
        "robust and standard differ in deeper layers: robust-vs-standard similarity (robust "
        "column) minus the seed-to-seed similarity of the two configurations (standard column), "
        "under the row's measure, mean over "
        "layers at relative depth >= 0.5; low/high: its interval over the jackknife and the seed "
        "pairs; shallower_difference: the same over the shallower layers"
    ),
    "specialisation_probe": (
        "robust representations are less specialised (linear-probe reading): probe accuracy, "
        "mean over deeper layers, robust - standard"
    ),
    "specialisation_class_cka": (
        "robust representations are less specialised (class-conditional reading): spread of "
        "class-conditional cross-layer CKA across classes, robust - standard"
    ),
}


PROBE_MEASURE = "linear_probe"  # the measure column of the probe reading (no similarity measure)


def paper_claims(ds: xr.Dataset) -> list[dict[str, Any]]:
    """One row per robust configuration, claim and measure: the measured robust and standard
    values, their difference, the seed noise it is held against, an interval where one exists,
    and the verdict (see the module doc). The similarity claims are read under every minibatch
    measure of the summary (`measure`), the probe reading once. Claims whose quantities the
    summary lacks are left out."""
    rows = []
    for measure in ds.measure.values:
        rows += _claims(ds.sel(measure=measure), str(measure), probes=False)
    return rows + _claims(ds.isel(measure=0), PROBE_MEASURE, probes=True)


def claim_verdicts(ds: xr.Dataset, claim: str, measure: str) -> dict[tuple[str, str], str]:
    """(arch, robust method id) -> the verdict of `claim` on `ds`, one dataset's summary read
    under `measure` (no measure dimension): the verdicts a claim's figure marks."""
    if claim not in CLAIMS:
        raise ValueError(f"no claim {claim!r}; the claims are {', '.join(CLAIMS)}")
    rows = _claims(ds, measure, probes=claim == "specialisation_probe")
    return {(r["arch"], r["method_id"]): r["verdict"] for r in rows if r["claim"] == claim}


def _claims(ds: xr.Dataset, measure: str, probes: bool) -> list[dict[str, Any]]:
    """The rows of one measure's view of the summary: the similarity claims, or (`probes`) the
    linear-probe reading."""
    rows = []
    for dataset, arch, method, robust, standard in _configs(ds):
        got: dict[str, dict | None] = {}
        models = np.concatenate([robust, standard])
        if probes:
            if _measured(ds, "probe_accuracy", models):
                got["specialisation_probe"] = _seed_claim(
                    _deep_probe(ds, robust), _deep_probe(ds, standard), -1
                )
        else:
            if _measured(ds, "block_score", models):
                bounds = ("block_score_low", "block_score_high") if "block_score_low" in ds else ()
                got["block_structure"] = _scalar_claim(
                    ds, "block_score", robust, standard, -1, *bounds
                )
            if "seed_effect" in ds:
                got["deeper_layers"] = _layer_claim(ds, dataset, arch, method)
            if _measured(ds, "class_cka_spread", models):
                got["specialisation_class_cka"] = _scalar_claim(
                    ds, "class_cka_spread", robust, standard, -1
                )
        for claim, row in got.items():
            if row is not None:
                where = {
                    "claim": claim,
                    "measure": measure,
                    "dataset": dataset,
                    "arch": arch,
                    "method_id": method,
                }
                rows.append({k: {**where, **row}.get(k, float("nan")) for k in COLUMNS})
    return rows
