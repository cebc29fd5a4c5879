# What Snakemake needs from the library: config checks, paths, input functions, rule params
# (each rule's params are exactly the settings that define its outputs) and resources.
import functools
import os
import re
import signal
import yaml
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from robrep import cluster as rcluster
from robrep import config as rcfg
from robrep import resources as rres
from robrep.adversarial import attack_batch_size
from robrep.analyses import ANALYSES, Study, comparisons, figures
from robrep.data import dataset_options
from robrep.ids import (
    CHECKPOINT_PATTERN,
    ID_PATTERN,
    INPUTS_PATTERN,
    ModelKey,
    StoreKey,
    adversarial_path,
    adversarial_source,
    comparison_path,
)

SCHEMA_PATH = Path(workflow.basedir) / "config" / "schema.yaml"
try:
    rcfg.check_unknown_keys(config, yaml.safe_load(SCHEMA_PATH.read_text()))
    rcfg.check_config(config)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")
validate(config, "../config/schema.yaml")
# Listed analyses must have pairs; the default (every analysis) skips those without.
ANALYSES_ASKED = "analyses" in config
config.setdefault("analyses", list(ANALYSES))
try:
    rcfg.check_metrics(config)
    rcfg.check_minibatches(config)
    rcfg.check_probes(config)
    if ANALYSES_ASKED:
        rcfg.check_analyses(config)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")

for line in rcfg.clamp_warnings(config):
    logger.warning(line)
EXAMPLES = rcfg.examples_used(config)  # per dataset: n_examples, at most the test split

RESULTS = "results"
ID = ID_PATTERN
TRAINING = config["training"]
ACT = config["activations"]
SIM = config["similarity"]
CHECKPOINT_EPOCHS = rcfg.saved_epochs(TRAINING["epochs"], TRAINING["checkpoint_every"])
try:
    STUDY = Study.from_config(config)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")
METHODS = STUDY.methods
# Imported models by id (the import rule's wildcard), and the pattern matching exactly them.
EXTERNAL = {m.id: entry for m, entry in rcfg.external_models(config).items()}
EXTERNAL_PATTERN = "|".join(re.escape(i) for i in EXTERNAL) or "(?!)"
FEATURES = ACT.get(
    "features", ACT["layers"]
)  # default: the Gram layers keep features too
for key in ("layers", "features"):
    selection = ACT["layers"] if key == "layers" else FEATURES
    if isinstance(selection, list):
        from robrep.models import build_model

        for arch in STUDY.architectures:
            try:
                build_model(arch, 3, 10, [0.5] * 3, [0.5] * 3).probe_layers(selection)
            except ValueError as err:
                raise WorkflowError(f"invalid config: activations.{key}: {err}")

WILDCARD_MODEL = ModelKey("{dataset}", "{arch}", "{method_id}", "{seed}")
MODEL_DIR = WILDCARD_MODEL.dir(RESULTS)
MODEL_ID = WILDCARD_MODEL.id
COMPARISONS = comparisons(STUDY, config["analyses"])
PROBED = [StoreKey(m) for m in STUDY.models] if config["probes"]["folds"] else []
AUTOATTACK = config["evaluation"]["autoattack"]
AUTOATTACKED = list(STUDY.models) if AUTOATTACK["n_examples"] else []
FIGURES = figures({analysis for analysis, _, _ in COMPARISONS}, probes=bool(PROBED))
STORES = sorted(  # every store a comparison or a probe reads, once
    {s for pair in COMPARISONS.values() for s in pair} | set(PROBED),
    key=lambda s: s.path(RESULTS),
)
ATTACKED = (
    sorted(  # (model, checkpoint) of every adversarial store the stores read, once
        {
            (source, s.checkpoint)
            for s in STORES
            if (source := adversarial_source(s.inputs, s.model)) is not None
        },
        key=lambda mc: adversarial_path(RESULTS, *mc),
    )
)


def splits_path(dataset):
    return f"{RESULTS}/data/{dataset}/splits.npz"


def evaluation_attack():
    """The evaluation attack's settings (config `evaluation` less its batch size)."""
    ev = dict(config["evaluation"])
    ev["eps"] = rcfg.parse_eps(ev["eps"], "evaluation.eps")
    ev.pop("batch_size", None)
    ev.pop("autoattack", None)  # AutoAttack has its own rule: it never retrains a model
    return ev


def train_settings(wildcards):
    """Everything that determines a model; a change reruns that model and what follows."""
    return dict(
        dataset=wildcards.dataset,
        arch=wildcards.arch,
        method=METHODS[wildcards.method_id],
        seed=int(wildcards.seed),
        epochs=TRAINING["epochs"],
        batch_size=TRAINING["batch_size"],
        lr=TRAINING["lr"],
        momentum=TRAINING["momentum"],
        weight_decay=TRAINING["weight_decay"],
        schedule=TRAINING["schedule"],
        checkpoint_every=TRAINING["checkpoint_every"],
        augment=TRAINING["augment"],
        evaluation=evaluation_attack(),
        eval_batch_size=config["evaluation"]["batch_size"],
    )


def checkpoint_file(wildcards):
    base = ModelKey(
        wildcards.dataset, wildcards.arch, wildcards.method_id, wildcards.seed
    ).dir(RESULTS)
    if wildcards.checkpoint == "final":
        return f"{base}/model.safetensors"
    if wildcards.checkpoint == "best":
        return f"{base}/best.safetensors"
    return f"{base}/checkpoints/{wildcards.checkpoint}.safetensors"


# The store layout: activation settings only (a similarity setting never re-plans extraction).
STORE_LAYOUT = dict(
    chunk_rows=ACT.get("chunk_rows") or ACT["cka_batch_size"],
    dtype=ACT["dtype"],
    compressor=ACT["compressor"],
    max_chunk_features=ACT.get("max_chunk_features"),
    pool=ACT.get("pool"),
    cka_batch_size=ACT["cka_batch_size"],
)


ATTACK_BATCH = attack_batch_size(ACT["batch_size"], STORE_LAYOUT["chunk_rows"])


def extract_inputs(wildcards):
    """A store's weights and splits, and for adversarial inputs the stored adversarial examples
    they are: the model's own (pgd) or the source model's (transfer-{source}), same checkpoint.
    """
    model = ModelKey(
        wildcards.dataset, wildcards.arch, wildcards.method_id, wildcards.seed
    )
    inputs = {
        "weights": checkpoint_file(wildcards),
        "splits": splits_path(wildcards.dataset),
    }
    try:
        source = adversarial_source(wildcards.inputs, model)
    except ValueError as err:
        raise WorkflowError(str(err))
    if source is None:
        return inputs
    if source.with_(seed=int(source.seed)) not in STUDY.models:
        raise WorkflowError(
            f"inputs {wildcards.inputs!r} of {model.id}: the source model {source.id} is not in "
            f"the study; sources: "
            + ", ".join(m.id for m in STUDY.models if m.dataset == model.dataset)
        )
    inputs["adversarial"] = adversarial_path(RESULTS, source, wildcards.checkpoint)
    return inputs


def comparison_stores(wildcards):
    a, b = COMPARISONS[(wildcards.analysis, wildcards.dataset, wildcards.pair)]
    return {"a": a.path(RESULTS), "b": b.path(RESULTS)}


def all_targets():
    """The default targets: the summary dataset, the accuracy table, every figure, and every
    activation store (kept as data: a deleted store is rebuilt, and with it its comparisons).
    """
    stores = [s.path(RESULTS) for s in STORES]
    stores += [adversarial_path(RESULTS, *mc) for mc in ATTACKED]
    return (
        [
            f"{RESULTS}/summary/{name}"
            for name in ("similarity.zarr", "accuracy.csv", "findings.csv")
        ]
        + [f"{RESULTS}/figures/{name}.png" for name in FIGURES]
        + stores
    )


# ------------------------------------------------------------------------------------------
# Resources for schedulers, derived from the config (see robrep.resources); retries scale them.

GFLOPS = config["resources"]["gflops"]
GPU = 1 if config["device"] == "cuda" else 0
VALUE_BYTES = {"float32": 4, "float16": 2}[ACT["dtype"]]


def _cost(dataset, arch):
    geo = rres.dataset_geometry(dataset, config["dataset_options"].get(dataset, {}))
    return geo, rres.model_cost(
        arch,
        geo.channels,
        geo.size,
        geo.classes,
        _hashable(ACT["layers"]),
        ACT.get("pool"),
        _hashable(FEATURES),
    )


def _hashable(layers):
    return layers if isinstance(layers, str) else tuple(layers)


# On a cluster every submission must fit one node: config resources.node, else the largest node
# SLURM lists. Group jobs are sized against the global cores and mem_mb (mem_mb is scoped per
# submission, so it does not cap the cluster), a job no node holds is refused before anything is
# submitted, and retries grow up to the node, never past it. The executor is unknown while this
# file is read, so the node is looked up when the first job's resources are evaluated (threads
# above the node's cores of a job evaluated before that are left to the pending-job watch).
def on_slurm():
    return getattr(workflow.executor_plugin, "name", None) == "slurm"


@functools.cache
def cluster_node():
    """The node every submission must fit (None when running locally); bounds group sizes."""
    if workflow.executor_plugin is None or workflow.local_exec:
        return None
    node = rcluster.node_capacity(config["resources"].get("node"), ask_slurm=on_slurm())
    if node is not None:
        for name, limit in (("_cores", node.cores), ("mem_mb", node.mem_mb)):
            given = workflow.global_resources.get(name)
            given = given.value if given is not None else None
            workflow.global_resources[name] = min(given, limit) if given else limit
    return node


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


def fitted(rule_name, est, key, attempt):
    """est[key] scaled by the attempt number, within one node; a first attempt no node can run
    stops the workflow, naming the rule and what to change."""
    node = cluster_node()
    if attempt == 1:
        try:
            rcluster.check_request(
                rule_name, est["mem_mb"], est["runtime"], node, SIZE_SETTINGS[rule_name]
            )
        except rcluster.ResourceRequestError as err:
            raise WorkflowError(str(err))
    value = est[key] * attempt
    if node is not None and key == "mem_mb":
        value = min(value, node.mem_mb)
    if node is not None and key == "runtime" and node.max_runtime is not None:
        value = min(value, node.max_runtime)
    return value


def train_resource(key):
    def value(wildcards, attempt):
        geo, cost = _cost(wildcards.dataset, wildcards.arch)
        est = rres.train_resources(
            geo,
            cost,
            TRAINING["epochs"],
            TRAINING["batch_size"],
            METHODS[wildcards.method_id]["steps"],
            config["evaluation"]["val_steps"],
            GFLOPS,
            TRAINING["val_fraction"],
        )
        return fitted("train", est, key, attempt)

    return value


def extract_resource(key):
    def value(wildcards, attempt):
        geo, cost = _cost(wildcards.dataset, wildcards.arch)
        est = rres.extract_resources(
            geo,
            cost,
            EXAMPLES[wildcards.dataset],
            wildcards.inputs != "benign",
            GFLOPS,
            VALUE_BYTES,
            ACT["cka_batch_size"],
            ACT["passes"],
        )
        return (
            est[key] * attempt
            if key == "disk_mb"
            else fitted("extract", est, key, attempt)
        )

    return value


def attack_resource(key):
    def value(wildcards, attempt):
        geo, cost = _cost(wildcards.dataset, wildcards.arch)
        est = rres.attack_resources(
            geo,
            cost,
            EXAMPLES[wildcards.dataset],
            ATTACK_BATCH,
            config["evaluation"]["steps"],
            GFLOPS,
        )
        return (
            est[key] * attempt
            if key == "disk_mb"
            else fitted("attack", est, key, attempt)
        )

    return value


def similarity_resource(key):
    def value(wildcards, attempt):
        a, b = COMPARISONS[(wildcards.analysis, wildcards.dataset, wildcards.pair)]
        _, cost_a = _cost(a.model.dataset, a.model.arch)
        _, cost_b = _cost(b.model.dataset, b.model.arch)
        full = any(m != "minibatch_cka" for m in SIM["metrics"])
        est = rres.similarity_resources(
            cost_a,
            cost_b,
            EXAMPLES[wildcards.dataset],
            ACT["cka_batch_size"],
            ACT["passes"],
            full,
            GFLOPS,
        )
        return fitted("similarity", est, key, attempt)

    return value


def probe_examples(wildcards):
    """Examples a probe reads: probes.n_examples, at most what the store holds."""
    return min(EXAMPLES[wildcards.dataset], config["probes"]["n_examples"])


def autoattack_examples(wildcards):
    """Examples AutoAttack attacks: its n_examples, at most the test split."""
    return min(EXAMPLES[wildcards.dataset], AUTOATTACK["n_examples"])


def import_resource(key):
    def value(wildcards, attempt):
        entry = EXTERNAL[wildcards.external]
        geo, cost = _cost(entry["dataset"], entry["arch"])
        est = rres.attack_resources(
            geo,
            cost,
            geo.examples,
            config["evaluation"]["batch_size"],
            config["evaluation"]["steps"],
            GFLOPS,
        )
        return fitted("import_model", est, key, attempt)

    return value


def probe_resource(key):
    def value(wildcards, attempt):
        _, cost = _cost(wildcards.dataset, wildcards.arch)
        n = probe_examples(wildcards)
        est = rres.probe_resources(cost, n, config["probes"]["folds"], GFLOPS)
        return fitted("probe", est, key, attempt)

    return value


def autoattack_resource(key):
    def value(wildcards, attempt):
        geo, cost = _cost(wildcards.dataset, wildcards.arch)
        version = AUTOATTACK["version"]
        est = rres.autoattack_resources(
            geo,
            cost,
            autoattack_examples(wildcards),
            version if isinstance(version, str) else tuple(version),
            config["evaluation"]["steps"],
            AUTOATTACK["batch_size"],
            GFLOPS,
        )
        return fitted("autoattack", est, key, attempt)

    return value


def _end_run(messages):
    """Called by the pending-job watch: say why, then interrupt Snakemake, which cancels the
    run's SLURM jobs and exits non-zero."""
    for message in messages:
        logger.error(message)
    os.kill(os.getpid(), signal.SIGINT)


def check_every_request():
    """On a cluster, refuse before anything is submitted a job of the study that no node can
    run (the same estimates the jobs will ask for, first attempt)."""
    if cluster_node() is None:
        return
    for m in STUDY.models:
        if m.id in EXTERNAL:
            import_resource("mem_mb")(SimpleNamespace(external=m.id), 1)
        else:
            train_resource("mem_mb")(SimpleNamespace(**vars(m)), 1)
    for model, checkpoint in ATTACKED:
        attack_resource("mem_mb")(
            SimpleNamespace(**vars(model), checkpoint=checkpoint), 1
        )
    for s in STORES:
        fields = dict(vars(s.model), checkpoint=s.checkpoint, inputs=s.inputs)
        extract_resource("mem_mb")(SimpleNamespace(**fields), 1)
    for analysis, dataset, pair in COMPARISONS:
        fields = dict(analysis=analysis, dataset=dataset, pair=pair)
        similarity_resource("mem_mb")(SimpleNamespace(**fields), 1)
    for s in PROBED:
        probe_resource("mem_mb")(SimpleNamespace(**vars(s.model)), 1)
    for m in AUTOATTACKED:
        autoattack_resource("mem_mb")(SimpleNamespace(**vars(m)), 1)


def cluster_start():
    """Before anything is submitted: refuse a job no node holds; under SLURM, end the run when a
    submitted job can never start (see robrep.cluster.PendingWatch)."""
    check_every_request()
    if on_slurm() and not workflow.dryrun:
        interval = config["resources"]["pending_check_seconds"]
        rcluster.PendingWatch(os.getcwd(), _end_run, interval=interval).start()


onstart:
    cluster_start()
