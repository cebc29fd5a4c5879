"""The paper's analyses as one registry: which store pairs each compares, what it summarises, which
figures draw it.

An analysis is one `Analysis` entry in `ANALYSES`: a `pairs(study)` function that yields the
(store a, store b) pairs it needs from the study's models, a `summarise(matrix, comparison)`
function that turns one comparison's layer x layer similarity into per-model summary values (for
the model of store a), the summary variables it declares, and the names of its figures. The
workflow asks `comparisons()` for the pairs, the config check and the schema's documentation read
the names, aggregation calls `summarise`, and the figure rule draws `figures`. Pure Python: no
Snakemake, testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robrep.ids import (
    BENIGN,
    OWN_ADVERSARIAL,
    StoreKey,
    comparison_id,
)
from robrep.similarity.result import MINIBATCH_CKA
from robrep.study.scores import (
    ADV_THRESHOLD,
    block_score_interval,
    block_structure_score,
    class_conditional_summary,
    depth_below,
    depth_matched_diagonal,
    diagonal,
)
from robrep.study.study import FROM_STANDARD, TRANSFER_DIRECTIONS, Pair, Study
from robrep.study.variables import Variable

Summarise = Callable[[np.ndarray, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Analysis:
    """One analysis: its pairs, its per-model summaries and its figures (see the module doc).

    `summaries` declares each variable `summarise` may return (`variables.Variable`: whether it is
    per layer, a vector along the first model's layers, or a scalar, and its attributes). `by_class`: its comparisons also hold
    class-conditional CKA. `seed_baseline`: its per-layer values are set against the seed-to-seed
    similarity of the configurations they compare (`summary.seed_baselines`; both sides must
    have the same architecture).
    """

    name: str
    compares: str
    pairs: Callable[[Study], Iterable[Pair]]
    summarise: Summarise
    summaries: Mapping[str, Variable]
    figures: tuple[str, ...]
    by_class: bool = False
    seed_baseline: bool = False


def _mean_diagonal(variable: str) -> Summarise:
    return lambda m, comparison: {variable: float(np.nanmean(diagonal(m)))}


# ----------------------------------------------------------------------------------------------
# The registry. Each `pairs` function yields pairs in model order.


def _cross_layer_pairs(study: Study) -> Iterable[Pair]:
    for m in study.models:
        for inputs in (BENIGN, OWN_ADVERSARIAL) if study.adversarial_inputs else (BENIGN,):
            store = StoreKey(m, inputs=inputs)
            yield store, store


def _cross_layer_summary(m: np.ndarray, comparison: Mapping[str, Any]) -> dict[str, Any]:
    if comparison["inputs"] != "benign":
        return {"block_score_pgd": block_structure_score(m)}
    out = {"block_score": block_structure_score(m)}
    part = comparison.get("part")
    if part is not None:
        out["block_score_low"], out["block_score_high"] = block_score_interval(part)
    if part is not None and "cka_by_class" in part:
        out.update(class_conditional_summary(part["cka_by_class"].values))
    return out


def _robust_vs_standard_pairs(study: Study) -> Iterable[Pair]:
    """Benign; with adversarial inputs also each model on its own adversarial examples (the
    released code's `--adv 1` on both sides)."""
    kinds = (BENIGN, OWN_ADVERSARIAL) if study.adversarial_inputs else (BENIGN,)
    for robust, standard in study.robust_models():
        for inputs in kinds:
            yield StoreKey(robust, inputs=inputs), StoreKey(standard, inputs=inputs)


def _robust_vs_standard_summary(m: np.ndarray, comparison: Mapping[str, Any]) -> dict[str, Any]:
    suffix = "" if comparison["inputs"] == BENIGN else "_pgd"
    return {f"robust_vs_standard_mean_diag{suffix}": float(np.nanmean(diagonal(m)))}


def _transfer_pairs(study: Study) -> Iterable[Pair]:
    for _, robust, standard in study.transfer_pairs():
        yield robust, standard


def _transfer_summary(m: np.ndarray, comparison: Mapping[str, Any]) -> dict[str, Any]:
    direction = (
        "standard_to_robust" if comparison["inputs"] == FROM_STANDARD else "robust_to_standard"
    )
    return {f"transfer_{direction}_mean_diag": float(np.nanmean(diagonal(m)))}


def _benign_vs_adversarial_pairs(study: Study) -> Iterable[Pair]:
    """Each model on benign x its own adversarial examples; with transfer, x the other model's."""
    if not study.adversarial_inputs:
        return
    for m in study.models:
        yield StoreKey(m), StoreKey(m, inputs=OWN_ADVERSARIAL)
    for direction, robust, standard in study.transfer_pairs():
        seen = robust if direction == "standard_to_robust" else standard
        yield StoreKey(seen.model), seen


def _benign_vs_adversarial_summary(m: np.ndarray, comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Depth where a model's layers on adversarial examples (its own, or for a robust model the
    standard model's) first fall below ADV_THRESHOLD similarity to the same layers on benign."""
    seen = comparison.get("inputs_b", OWN_ADVERSARIAL)
    if seen == OWN_ADVERSARIAL:
        return {f"adversarial_depth_below_{ADV_THRESHOLD}": depth_below(diagonal(m))}
    if seen == FROM_STANDARD:
        return {f"transfer_depth_below_{ADV_THRESHOLD}": depth_below(diagonal(m))}
    return {}  # the standard model on one of several robust models' examples: no one scalar


def _epochs_pairs(study: Study) -> Iterable[Pair]:
    for m in study.models:
        if m in study.external:
            continue  # an imported model has its final weights only
        for checkpoint in study.checkpoints:
            if checkpoint != "final":
                yield StoreKey(m, checkpoint=checkpoint), StoreKey(m)


def _epochs_summary(m: np.ndarray, comparison: Mapping[str, Any]) -> dict[str, Any]:
    if comparison["checkpoint"] != "best":
        return {}
    return {"best_final_drop": 1.0 - diagonal(m)}


def _threat_models_pairs(study: Study) -> Iterable[Pair]:
    for m in study.models:
        method = study.methods[m.method_id]
        if method["norm"] != "linf":
            continue
        for other_id, other in study.methods.items():
            if other["norm"] == "l2" and other["method"] == method["method"]:
                yield StoreKey(m), StoreKey(m.with_(method_id=other_id))


def _seeds_pairs(study: Study) -> Iterable[Pair]:
    for m in study.models:
        for seed in study.seeds:
            if seed > m.seed:
                yield StoreKey(m), StoreKey(m.with_(seed=seed))


def _width_depth_pairs(study: Study) -> Iterable[Pair]:
    archs = study.architectures
    for m in study.models:
        for arch in archs[archs.index(m.arch) + 1 :]:
            if study.families[arch] == study.families[m.arch]:
                yield StoreKey(m), StoreKey(m.with_(arch=arch))


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis(
            "cross_layer",
            "each model's layers x its own layers, benign (and PGD) inputs",
            _cross_layer_pairs,
            _cross_layer_summary,
            {
                "block_score": Variable(
                    "block-structure score",
                    "the strongest contiguous block of the benign cross-layer CKA matrix: max over "
                    "layer segments of (mean similarity within - mean similarity across)",
                    "robrep.study.scores.block_structure_score",
                ),
                "block_score_low": Variable(
                    "block-structure score, interval low end",
                    "low end of the block score's 95% jackknife interval over minibatches",
                    "robrep.study.scores.block_score_interval",
                ),
                "block_score_high": Variable(
                    "block-structure score, interval high end",
                    "high end of the block score's 95% jackknife interval over minibatches",
                    "robrep.study.scores.block_score_interval",
                ),
                "block_score_pgd": Variable(
                    "block-structure score on adversarial inputs",
                    "the block score of the cross-layer matrix on the model's own PGD examples",
                    "robrep.study.scores.block_structure_score",
                ),
                "class_cka_mean": Variable(
                    "class-conditional cross-layer CKA, mean",
                    "mean over classes and distinct layer pairs of minibatch CKA on one class's "
                    "examples",
                    "robrep.study.scores.class_conditional_summary",
                ),
                "class_cka_spread": Variable(
                    "class-conditional cross-layer CKA, spread",
                    "standard deviation over classes of class-conditional CKA, mean over layer "
                    "pairs: how differently the layers relate for different classes",
                    "robrep.study.scores.class_conditional_summary",
                ),
            },
            ("cross_layer_heatmaps", "block_score_vs_eps", "class_conditional_cka"),
            by_class=True,
        ),
        Analysis(
            "robust_vs_standard",
            "each robust model x the standard model, same dataset/arch/seed, on benign inputs "
            "and each on its own adversarial examples",
            _robust_vs_standard_pairs,
            _robust_vs_standard_summary,
            {
                "robust_vs_standard_mean_diag": Variable(
                    "robust vs standard, same-layer CKA",
                    "mean over layers of CKA(layer of the robust model, same layer of the standard "
                    "model), benign inputs",
                    "robrep.study.analyses._robust_vs_standard_summary",
                ),
                "robust_vs_standard_mean_diag_pgd": Variable(
                    "robust vs standard, same-layer CKA on adversarial inputs",
                    "the same, each model on its own PGD examples",
                    "robrep.study.analyses._robust_vs_standard_summary",
                ),
            },
            ("robust_vs_standard_diagonal", "robust_vs_standard_matrix"),
            seed_baseline=True,
        ),
        Analysis(
            "transfer",
            "each robust model x the standard model, both on the standard model's adversarial "
            "examples and both on the robust model's (transfer.directions)",
            _transfer_pairs,
            _transfer_summary,
            {
                f"transfer_{d}_mean_diag": Variable(
                    f"robust vs standard, same-layer CKA, {d.replace('_', ' ')} transfer",
                    "mean over layers of CKA(robust layer, same standard layer), both models on "
                    + ("the standard" if d == "standard_to_robust" else "the robust")
                    + " model's adversarial examples",
                    "robrep.study.analyses._transfer_summary",
                )
                for d in TRANSFER_DIRECTIONS
            },
            ("transfer_diagonal",),
            seed_baseline=True,
        ),
        Analysis(
            "benign_vs_adversarial",
            "each model on benign x its own adversarial examples, and x the other model's of "
            "each transfer pair",
            _benign_vs_adversarial_pairs,
            _benign_vs_adversarial_summary,
            {
                f"adversarial_depth_below_{ADV_THRESHOLD}": Variable(
                    f"depth where benign vs PGD CKA falls below {ADV_THRESHOLD}",
                    "relative depth (0 first probed layer, 1 last) of the first layer whose CKA "
                    "between benign and own-PGD inputs is below the threshold; NaN if none",
                    "robrep.study.scores.depth_below",
                ),
                f"transfer_depth_below_{ADV_THRESHOLD}": Variable(
                    f"depth where benign vs transferred CKA falls below {ADV_THRESHOLD}",
                    "the same for a robust model on benign vs on the standard model's "
                    "adversarial examples",
                    "robrep.study.scores.depth_below",
                ),
            },
            ("benign_vs_adversarial_diagonal",),
            seed_baseline=True,
        ),
        Analysis(
            "epochs",
            "each saved checkpoint and best x final, same model",
            _epochs_pairs,
            _epochs_summary,
            {
                "best_final_drop": Variable(
                    "best vs final checkpoint dissimilarity",
                    "1 - CKA(best checkpoint, final checkpoint) per layer",
                    "robrep.study.analyses._epochs_summary",
                    per_layer=True,
                )
            },
            ("epochs_heatmaps",),
            seed_baseline=True,
        ),
        Analysis(
            "threat_models",
            "Linf- x L2-trained models of the same method, arch and seed",
            _threat_models_pairs,
            _mean_diagonal("threat_model_mean_diag"),
            {
                "threat_model_mean_diag": Variable(
                    "Linf vs L2 model, same-layer CKA",
                    "mean over layers of CKA(layer, same layer) of the Linf model and its L2 "
                    "counterpart",
                    "robrep.study.analyses._mean_diagonal",
                )
            },
            ("threat_models_diagonal",),
            seed_baseline=True,
        ),
        Analysis(
            "seeds",
            "the same configuration at different seeds",
            _seeds_pairs,
            _mean_diagonal("seed_mean_diag"),
            {
                "seed_mean_diag": Variable(
                    "seed vs seed, same-layer CKA",
                    "mean over layers of CKA(layer, same layer) of a model and the same "
                    "configuration at a later seed",
                    "robrep.study.analyses._mean_diagonal",
                )
            },
            ("seeds_diagonal",),
        ),
        Analysis(
            "width_depth",
            "architectures of one family (wrn-*, convnet*), layers matched by relative depth",
            _width_depth_pairs,
            lambda m, comparison: {
                "width_depth_mean_diag": float(np.nanmean(depth_matched_diagonal(m)))
            },
            {
                "width_depth_mean_diag": Variable(
                    "width/depth, depth-matched CKA",
                    "mean over the first architecture's layers of CKA with the layer at the same "
                    "relative depth of the wider or deeper family member",
                    "robrep.study.scores.depth_matched_diagonal",
                )
            },
            ("width_depth_diagonal",),
        ),
    )
}
STUDY_FIGURES = ("accuracy_vs_eps",)  # drawn from the models' metrics, whatever the analyses
PROBE_FIGURES = ("linear_probe_accuracy",)  # drawn from the linear probes, when computed
# Drawn again under every other minibatch measure of similarity.metrics (the claims' figures).
MEASURE_FIGURES = ("cross_layer_heatmaps", "block_score_vs_eps", "robust_vs_standard_diagonal")


def comparisons(study: Study, analyses: Sequence[str]) -> dict[tuple[str, str, str], Pair]:
    """Every (analysis, dataset, pair id) -> (store a, store b) that `analyses` ask for, analysis
    by analysis in registry order, each in model order.

    Pairs grow with what each analysis needs (per model, per robust model, per seed pair, ...),
    never as all models x all models.
    """
    out: dict[tuple[str, str, str], Pair] = {}
    models = set(study.models)
    for name, analysis in ANALYSES.items():
        if name in analyses:
            for a, b in analysis.pairs(study):
                # A partner the study lacks (an imported model's seed or arch that nothing
                # else has) is no pair.
                if a.model in models and b.model in models:
                    out[(name, a.model.dataset, comparison_id(a, b))] = (a, b)
    return out


def figures(analyses: Iterable[str], probes: bool = False) -> list[str]:
    """The figures of `analyses` (those with at least one comparison), the linear probes' (with
    `probes`), then the study's own."""
    names = [f for name in ANALYSES if name in set(analyses) for f in ANALYSES[name].figures]
    return names + list(PROBE_FIGURES if probes else ()) + list(STUDY_FIGURES)


def figure_group(figure: str) -> str:
    """Where a figure belongs in the report: its analysis (``cross_layer``), ``linear_probes``
    or ``accuracy``."""
    for name, analysis in ANALYSES.items():
        if figure in analysis.figures:
            return name
    if figure in PROBE_FIGURES:
        return "linear_probes"
    if figure in STUDY_FIGURES:
        return "accuracy"
    raise ValueError(f"no analysis draws figure {figure!r}")


def drawn(analyses: Iterable[str], probes: bool, measures: Sequence[str]) -> list[tuple[str, str]]:
    """(figure, measure) of every figure drawn: each of `figures` under minibatch linear CKA,
    and `MEASURE_FIGURES` among them under every other minibatch measure in `measures`."""
    names = figures(analyses, probes)
    others = [m for m in measures if m != MINIBATCH_CKA]
    return [(name, MINIBATCH_CKA) for name in names] + [
        (name, m) for m in others for name in names if name in MEASURE_FIGURES
    ]
