"""Job sizing: each rule's memory, runtime, disk and GPU request for one job, from the config and
the study, fitted to the node every submission must run on.

Devices are resources: under `device: cuda` every rule of `GPU_RULES` asks for one GPU (the
`gpu` resource, which the SLURM executor turns into a GPU request) and its GPU memory is checked
against the node's; every other rule, and every rule under `auto` or `cpu`, asks for none.

`JobSizer(config, study, comparisons).request(rule, key, wildcards, attempt, node)` is what a
rule's `resources:` asks; the estimates themselves are `robrep.pipeline.resources`. A first
attempt that no node can run is refused (`cluster.ResourceRequestError`, naming the rule and the
settings that size it); retries scale the request by the attempt number, up to the node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from robrep.ids import ModelKey, StoreKey
from robrep.learn.cost import ModelCost, model_cost
from robrep.pipeline import resources as rres
from robrep.pipeline.cluster import NodeCapacity, check_request
from robrep.pipeline.config import (
    autoattack_examples,
    evaluation_attack,
    examples_used,
    external_models,
    feature_layers,
)
from robrep.similarity.measures import GRAM_MEASURES
from robrep.store.format import RELEASE_VALUES
from robrep.study.study import Pair, Study

# What sizes each rule's jobs, named when a job cannot fit a node.
SIZE_SETTINGS = {
    "train": "training.epochs/batch_size or resources.gflops",
    "import_model": "evaluation.steps/batch_size or resources.gflops",
    "attack": "activations.n_examples/batch_size, evaluation.steps or resources.gflops",
    "extract": "activations.n_examples/cka_batch_size/passes or resources.gflops",
    "similarity": "activations.n_examples/cka_batch_size/passes or the full-data similarity.metrics",
    "probe": "probes.n_examples/folds or activations.features",
    "autoattack": "evaluation.autoattack.n_examples/version or resources.gflops",
}
# What a rule's GPU memory grows with, named when its largest pass cannot fit the node's GPU.
GPU_SETTINGS = {
    "train": "training.batch_size",
    "import_model": "a GPU with more memory (one example's attack pass does not fit)",
    "attack": "a GPU with more memory (one example's attack pass does not fit)",
    "extract": "activations.cka_batch_size",
    "similarity": "activations.cka_batch_size or activations.layers",
    "autoattack": "evaluation.autoattack.batch_size",
}
GPU_RULES = frozenset(GPU_SETTINGS)  # the rules that compute on a GPU under device: cuda
# The config `threads` entry each sized rule's jobs run with.
THREADS = {
    "train": "train",
    "import_model": "train",
    "autoattack": "train",
    "attack": "extract",
    "extract": "extract",
    "similarity": "similarity",
    "probe": "similarity",
}
VALUE_BYTES = {"float32": 4, "float16": 2}  # activations.dtype


def _hashable(layers: str | list[str]) -> str | tuple[str, ...]:
    return layers if isinstance(layers, str) else tuple(layers)


def _store_wildcards(store: StoreKey) -> SimpleNamespace:
    """The wildcards of a job that writes or reads one store (extract, probe)."""
    return SimpleNamespace(**vars(store.model), checkpoint=store.checkpoint, inputs=store.inputs)


class JobSizer:
    """The resources of every rule's jobs in one study (see the module doc). `wildcards` is any
    object with the rule's wildcards as attributes (Snakemake's, or a `SimpleNamespace`)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        study: Study,
        comparisons: Mapping[tuple[str, str, str], Pair],
    ) -> None:
        self.config = config
        self.study = study
        self.comparisons = comparisons
        self.act = config["activations"]
        self.examples = examples_used(config)
        self.external = {m.id: entry for m, entry in external_models(config).items()}
        self.gflops = config["resources"]["gflops"]  # where the networks run
        self.cpu_gflops = config["resources"]["cpu_gflops"]  # numpy work on a job's CPU cores
        self.on_gpu = config["device"] == "cuda"
        self.attack_batch = self.act["batch_size"]  # its own setting: not the CKA partition
        # The evaluation attack of each dataset (`config.evaluation_attack`), derived once.
        self.evaluation = {d: evaluation_attack(config, d) for d in config["datasets"]}
        self._estimators = {
            "train": self._train,
            "import_model": self._import_model,
            "attack": self._attack,
            "extract": self._extract,
            "similarity": self._similarity,
            "probe": self._probe,
            "autoattack": self._autoattack,
        }

    # ------------------------------------------------------------------------------------------
    # What each rule's job reads or attacks (also its params).

    def probe_examples(self, dataset: str) -> int:
        """Examples a probe reads: probes.n_examples, at most what the store holds."""
        return min(self.examples[dataset], self.config["probes"]["n_examples"])

    def autoattack_examples(self, dataset: str) -> int:
        """Examples AutoAttack attacks: its n_examples, at most the test split."""
        return autoattack_examples(self.config)[dataset]

    def threads(self, rule: str) -> int:
        """The threads (CPUs) one job of `rule` runs with: config `threads`, `THREADS[rule]`."""
        return int(self.config["threads"][THREADS[rule]])

    def gpus(self, rule: str) -> int:
        """The GPUs one job of `rule` asks for: 1 for a GPU rule under device: cuda, else 0."""
        return int(self.on_gpu and rule in GPU_RULES)

    # ------------------------------------------------------------------------------------------
    # Estimates (first attempt, no node).

    def estimate(self, rule: str, wildcards: Any) -> dict[str, int]:
        """mem_mb, runtime (minutes), for rules that write stores disk_mb, and for a job on a GPU
        gpu (1) and gpu_mem_mb (its largest pass) of one job."""
        try:
            estimator = self._estimators[rule]
        except KeyError:
            raise ValueError(
                f"no job sizing for rule {rule!r}; sized rules: {', '.join(self._estimators)}"
            ) from None
        return estimator(wildcards)

    def request(
        self, rule: str, key: str, wildcards: Any, attempt: int, node: NodeCapacity | None
    ) -> int:
        """The job's `key` request on attempt `attempt`: the estimate times the attempt, within
        one node (disk is not a node limit); a first attempt no node can run is refused."""
        est = self.estimate(rule, wildcards)
        if attempt == 1:
            check_request(rule, est, node, SIZE_SETTINGS[rule], GPU_SETTINGS.get(rule, ""))
        value = est[key] * attempt
        if node is not None and key == "mem_mb":
            value = min(value, node.mem_mb)
        if node is not None and key == "runtime" and node.max_runtime is not None:
            value = min(value, node.max_runtime)
        return value

    def check_every_job(self, jobs: Iterable[tuple[str, Any]], node: NodeCapacity | None) -> None:
        """Refuse, before anything is submitted, the first job no node can run."""
        if node is None:
            return
        for rule, wildcards in jobs:
            self.request(rule, "mem_mb", wildcards, 1, node)

    def planned_jobs(
        self,
        attacked: Iterable[tuple[ModelKey, str]],
        stores: Iterable[StoreKey],
        probed: Iterable[StoreKey],
        autoattacked: Iterable[ModelKey],
    ) -> Iterator[tuple[str, SimpleNamespace]]:
        """(rule, wildcards) of every sized job of the study."""
        for m in self.study.models:
            if m.id in self.external:
                yield "import_model", SimpleNamespace(external=m.id)
            else:
                yield "train", SimpleNamespace(**vars(m))
        for model, checkpoint in attacked:
            yield "attack", SimpleNamespace(**vars(model), checkpoint=checkpoint)
        for s in stores:
            yield "extract", _store_wildcards(s)
        for analysis, dataset, pair in self.comparisons:
            yield "similarity", SimpleNamespace(analysis=analysis, dataset=dataset, pair=pair)
        for s in probed:
            yield "probe", _store_wildcards(s)
        for m in autoattacked:
            yield "autoattack", SimpleNamespace(**vars(m))

    # ------------------------------------------------------------------------------------------

    def _cost(self, dataset: str, arch: str) -> tuple[rres.DatasetGeometry, ModelCost]:
        geo = rres.dataset_geometry(dataset, self.config["dataset_options"].get(dataset, {}))
        cost = model_cost(
            arch,
            geo.channels,
            geo.size,
            geo.classes,
            _hashable(self.act["layers"]),
            self.act.get("pool"),
            _hashable(feature_layers(self.config)),
        )
        return geo, cost

    def _train(self, wc: Any) -> dict[str, int]:
        training = self.config["training"]
        geo, cost = self._cost(wc.dataset, wc.arch)
        return rres.train_resources(
            geo,
            cost,
            training["epochs"],
            training["batch_size"],
            self.study.methods[wc.method_id]["steps"],
            self.evaluation[wc.dataset]["val_steps"],
            self.gflops,
            training["val_fraction"],
            self.on_gpu,
        )

    def _import_model(self, wc: Any) -> dict[str, int]:
        entry = self.external[wc.external]
        geo, cost = self._cost(entry["dataset"], entry["arch"])
        return rres.attack_resources(
            geo,
            cost,
            geo.examples,
            self.config["evaluation"]["batch_size"],
            self.evaluation[entry["dataset"]]["steps"],
            self.gflops,
            self.on_gpu,
        )

    def _attack(self, wc: Any) -> dict[str, int]:
        geo, cost = self._cost(wc.dataset, wc.arch)
        return rres.attack_resources(
            geo,
            cost,
            self.examples[wc.dataset],
            self.attack_batch,
            self.evaluation[wc.dataset]["steps"],
            self.gflops,
            self.on_gpu,
        )

    def _extract(self, wc: Any) -> dict[str, int]:
        geo, cost = self._cost(wc.dataset, wc.arch)
        return rres.extract_resources(
            geo,
            cost,
            self.examples[wc.dataset],
            wc.inputs != "benign",
            self.gflops,
            VALUE_BYTES[self.act["dtype"]],
            self.act["cka_batch_size"],
            self.act["passes"],
            self.on_gpu,
            self.act["compat"] == RELEASE_VALUES,
        )

    def _similarity(self, wc: Any) -> dict[str, int]:
        a, b = self.comparisons[(wc.analysis, wc.dataset, wc.pair)]
        _, cost_a = self._cost(a.model.dataset, a.model.arch)
        _, cost_b = self._cost(b.model.dataset, b.model.arch)
        metrics = self.config["similarity"]["metrics"]
        full = any(m not in GRAM_MEASURES for m in metrics)
        return rres.similarity_resources(
            cost_a,
            cost_b,
            self.examples[wc.dataset],
            self.act["cka_batch_size"],
            self.act["passes"],
            full,
            self.gflops if self.on_gpu else self.cpu_gflops,
            self.cpu_gflops,
            self.on_gpu,
            [m for m in metrics if m in GRAM_MEASURES],
            self.config["similarity"]["permutations"],
        )

    def _probe(self, wc: Any) -> dict[str, int]:
        _, cost = self._cost(wc.dataset, wc.arch)
        n = self.probe_examples(wc.dataset)
        return rres.probe_resources(cost, n, self.config["probes"]["folds"], self.cpu_gflops)

    def _autoattack(self, wc: Any) -> dict[str, int]:
        geo, cost = self._cost(wc.dataset, wc.arch)
        autoattack = self.config["evaluation"]["autoattack"]
        version = autoattack["version"]
        return rres.autoattack_resources(
            geo,
            cost,
            self.autoattack_examples(wc.dataset),
            version if isinstance(version, str) else tuple(version),
            self.evaluation[wc.dataset]["steps"],
            autoattack["batch_size"],
            self.gflops,
            self.on_gpu,
        )
