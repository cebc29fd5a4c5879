"""What a config's run will do and what it costs, before anything runs.

`planned_work` derives the jobs the DAG plans (comparisons, stores, adversarial examples, probes,
AutoAttack evaluations) once, for the workflow and for `robrep plan`; `expected_outputs` lists every file
the run leaves (for `rule all` and `robrep verify`); `plan_by_rule` sums the job
sizer's requests per rule (`robrep.pipeline.jobs.JobSizer`, the numbers every job is submitted
with), and `format_plan` prints them beside the node they must fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robrep.ids import (
    ModelKey,
    StoreKey,
    adversarial_path,
    adversarial_source,
    comparison_path,
    saved_epochs,
    splits_path,
)
from robrep.pipeline.cluster import NodeCapacity
from robrep.pipeline.config import external_models
from robrep.similarity.measures import GRAM_MEASURES
from robrep.similarity.result import MINIBATCH_CKA
from robrep.study.analyses import comparisons, drawn
from robrep.study.study import Pair, Study

if TYPE_CHECKING:
    from robrep.pipeline.jobs import JobSizer

RESULTS = "results"  # the results tree, relative to the working directory


@dataclass(frozen=True)
class PlannedWork:
    """The work of one study: every comparison, every store a comparison or a probe reads (once),
    every (model, checkpoint) whose adversarial examples a store reads (once), and the stores and
    models probed and attacked by AutoAttack."""

    comparisons: dict[tuple[str, str, str], Pair]
    stores: list[StoreKey]
    attacked: list[tuple[ModelKey, str]]
    probed: list[StoreKey]
    autoattacked: list[ModelKey]


def planned_work(config: Mapping[str, Any], study: Study) -> PlannedWork:
    """The `PlannedWork` of a checked config (`pipeline.config.load_config`) and its study."""
    pairs = comparisons(study, config["analyses"])
    probed = [StoreKey(m) for m in study.models] if config["probes"]["folds"] else []
    autoattacked = list(study.models) if config["evaluation"]["autoattack"]["n_examples"] else []
    stores = sorted(
        {s for pair in pairs.values() for s in pair} | set(probed), key=lambda s: s.path(RESULTS)
    )
    attacked = sorted(
        {
            (source, s.checkpoint)
            for s in stores
            if (source := adversarial_source(s.inputs, s.model)) is not None
        },
        key=lambda mc: adversarial_path(RESULTS, *mc),
    )
    return PlannedWork(pairs, stores, attacked, probed, autoattacked)


# Each figure's files: the PNG (in the report), an SVG for papers, the numbers drawn as CSV.
FIGURE_FORMATS = ("png", "svg", "csv")


def figure_path(dataset: str, name: str, measure: str = MINIBATCH_CKA, fmt: str = "png") -> str:
    """A figure of one dataset in format `fmt` (one of `FIGURE_FORMATS`):
    results/figures/<dataset>/<figure>.<fmt> under minibatch CKA,
    results/figures/<dataset>/<measure>/<figure>.<fmt> under another minibatch measure."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"no figure format {fmt!r}; they are {', '.join(FIGURE_FORMATS)}")
    if measure == MINIBATCH_CKA:
        return f"{RESULTS}/figures/{dataset}/{name}.{fmt}"
    return f"{RESULTS}/figures/{dataset}/{measure}/{name}.{fmt}"


def drawn_figures(
    config: Mapping[str, Any], study: Study, work: PlannedWork
) -> list[tuple[str, str, str]]:
    """(dataset, figure, measure) of every figure drawn: each dataset's own, from its comparisons
    and probes, under each minibatch measure of the config."""
    measures = [m for m in config["similarity"]["metrics"] if m in GRAM_MEASURES]
    return [
        (dataset, name, measure)
        for dataset in dict.fromkeys(m.dataset for m in study.models)
        for name, measure in drawn(
            {a for a, d, _ in work.comparisons if d == dataset}, bool(work.probed), measures
        )
    ]


SUMMARY_FILES = ("similarity.zarr", "similarity.nc", "accuracy.csv", "findings.csv")
# The report's pages (results/report/<page>.html) and their categories in the report.
REPORT_PAGES = {
    "findings": "Findings",
    "accuracy": "Accuracy",
    "interactive": "Interactive",
    "provenance": "Provenance",
}


def report_page_path(name: str) -> str:
    """``results/report/{name}.html``: a page of the report beside its figures."""
    return f"{RESULTS}/report/{name}.html"


def summary_path(name: str) -> str:
    """``results/summary/{name}``: one of `SUMMARY_FILES`, what aggregation writes."""
    if name not in SUMMARY_FILES:
        raise ValueError(f"{name!r} is not a summary file; they are {', '.join(SUMMARY_FILES)}")
    return f"{RESULTS}/summary/{name}"


def expected_outputs(
    config: Mapping[str, Any], study: Study, work: PlannedWork
) -> dict[str, list[str]]:
    """Every file a complete run of the config leaves under `results/`, by kind (the kinds of
    `robrep.pipeline.verify.CHECKS`, plus tables and figures): what `robrep verify` expects."""
    imported = set(external_models(config))
    epochs = saved_epochs(config["training"]["epochs"], config["training"]["checkpoint_every"])
    trained = ["final", "best", *(f"epoch{e}" for e in epochs)]
    weights = [
        model.weights_path(RESULTS, checkpoint)
        for model in study.models
        for checkpoint in (["final"] if model in imported else trained)
    ]
    summary = [summary_path(name) for name in SUMMARY_FILES]
    return {
        "splits": [splits_path(RESULTS, d) for d in dict.fromkeys(m.dataset for m in study.models)],
        "weights": weights,
        "metrics": [f"{m.dir(RESULTS)}/metrics.json" for m in study.models],
        "autoattack": [f"{m.dir(RESULTS)}/autoattack.json" for m in work.autoattacked],
        "adversarial examples": [adversarial_path(RESULTS, *mc) for mc in work.attacked],
        "store": [s.path(RESULTS) for s in work.stores],
        "comparison": [comparison_path(RESULTS, *key) for key in work.comparisons],
        "probe": [s.probe_path(RESULTS) for s in work.probed],
        "summary": [p for p in summary if p.endswith(".nc")],
        "summary store": [p for p in summary if p.endswith(".zarr")],
        "table": [p for p in summary if p.endswith(".csv")],
        "figure": [
            figure_path(*f, fmt=fmt)
            for f in drawn_figures(config, study, work)
            for fmt in FIGURE_FORMATS
        ],
        "page": [report_page_path(name) for name in REPORT_PAGES],
    }


@dataclass
class RulePlan:
    """One rule's jobs summed: requested runtime (minutes) times threads and GPUs, the largest
    memory requests, and the disk its outputs take (where the sizer estimates it)."""

    rule: str
    threads: int
    jobs: int = 0
    minutes: int = 0
    gpus: int = 0  # per job
    largest_mem_mb: int = 0
    largest_gpu_mem_mb: int = 0
    disk_mb: int = 0
    largest_runtime: int = 0

    @property
    def cpu_hours(self) -> float:
        return self.minutes * self.threads / 60

    @property
    def gpu_hours(self) -> float:
        return self.minutes * self.gpus / 60


def plan_by_rule(jobs: Iterable[tuple[str, Any]], sizer: JobSizer) -> list[RulePlan]:
    """Per rule, in order of first appearance: the sums over `jobs` of what `sizer` requests
    for each on its first attempt (`JobSizer.estimate`), and its threads and GPUs per job."""
    plans: dict[str, RulePlan] = {}
    for rule, wildcards in jobs:
        plan = plans.setdefault(rule, RulePlan(rule, sizer.threads(rule), gpus=sizer.gpus(rule)))
        est = sizer.estimate(rule, wildcards)
        plan.jobs += 1
        plan.minutes += est["runtime"]
        plan.largest_runtime = max(plan.largest_runtime, est["runtime"])
        plan.largest_mem_mb = max(plan.largest_mem_mb, est["mem_mb"])
        plan.largest_gpu_mem_mb = max(plan.largest_gpu_mem_mb, est.get("gpu_mem_mb", 0))
        plan.disk_mb += est.get("disk_mb", 0)
    return list(plans.values())


def format_plan(plans: list[RulePlan], node: NodeCapacity | None) -> str:
    """The plan as a table with a total line and the node every job must fit."""
    head = (
        f"{'rule':<14}{'jobs':>7}{'threads':>8}{'GPUs':>5}{'CPU-h':>10}{'GPU-h':>9}"
        f"{'max min':>9}{'max mem MB':>12}{'max GPU MB':>12}{'disk GB':>9}"
    )
    lines = [head]
    for p in plans:
        lines.append(
            f"{p.rule:<14}{p.jobs:>7}{p.threads:>8}{p.gpus:>5}{p.cpu_hours:>10.1f}"
            f"{p.gpu_hours:>9.1f}{p.largest_runtime:>9}{p.largest_mem_mb:>12}"
            f"{p.largest_gpu_mem_mb or '-':>12}{p.disk_mb / 1024:>9.1f}"
        )
    lines.append(
        f"{'total':<14}{sum(p.jobs for p in plans):>7}{'':>8}{'':>5}"
        f"{sum(p.cpu_hours for p in plans):>10.1f}{sum(p.gpu_hours for p in plans):>9.1f}"
        f"{'':>9}{'':>12}{'':>12}{sum(p.disk_mb for p in plans) / 1024:>9.1f}"
    )
    lines.append(
        "hours are the requested runtimes (the resource model's estimate with its 2x margin); "
        "disk: activation stores and adversarial examples, uncompressed"
    )
    lines.append(f"node: {node}" if node else "node: none given (resources.node), not checked")
    return "\n".join(lines)
