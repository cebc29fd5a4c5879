# What Snakemake needs from the library: the checked config and its study (one library call),
# paths, input functions and rule params (each rule's params are exactly the settings that define
# its outputs); job sizing is the library's `JobSizer`, asked through `resource(rule, key)`.
import copy
import functools
import os
import re
import signal
import yaml
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import apply_wildcards
from snakemake.logging import logger
from snakemake.utils import validate

from robrep import ids
from robrep.ids import (
    CHECKPOINT_PATTERN,
    ID_PATTERN,
    INPUTS_PATTERN,
    ModelKey,
    StoreKey,
    adversarial_path,
    adversarial_source,
    comparison_path,
    saved_epochs,
)
from robrep.io.atomic import remove_leftovers
from robrep.io.checksums import DamagedArtefactError
from robrep.learn.data import dataset_options
from robrep.pipeline import cluster as rcluster
from robrep.pipeline import config as rcfg
from robrep.pipeline import job_times
from robrep.pipeline import plan as rplan
from robrep.pipeline import record as rrecord
from robrep.pipeline.jobs import JobSizer
from robrep.study.analyses import ANALYSES, figure_group
from robrep.study.verdicts import verdict_table

SCHEMA_PATH = Path(workflow.basedir) / "config" / "schema.yaml"
# The config as the files said it, before defaults are filled: for the run record.
GIVEN = rcfg.study_settings(copy.deepcopy(config))
try:
    rcfg.check_config_files(
        [
            Path(workflow.basedir) / "config" / "config.yaml",
            *workflow.overwrite_configfiles,
        ]
    )
    STUDY, CONFIG_WARNINGS = rcfg.load_config(
        config,
        yaml.safe_load(SCHEMA_PATH.read_text()),
        lambda c: validate(c, "../config/schema.yaml"),
    )
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")
for line in CONFIG_WARNINGS:
    logger.warning(line)
RESULTS = rplan.RESULTS
# The run record (results/run.json): a tree another directory wrote with other settings is
# refused, not mixed into (robrep.pipeline.record); written when a run starts.
RUN_RECORD = rrecord.RunRecord(
    os.path.realpath(os.getcwd()),
    rrecord.absolute(workflow.overwrite_configfiles),
    GIVEN,
    rcfg.study_settings(config),
)
try:
    rrecord.check_reuse(RESULTS, RUN_RECORD)
except rrecord.MixedResultsError as err:
    raise WorkflowError(str(err))
except DamagedArtefactError as err:
    logger.warning(
        f"{err}: which run wrote {RESULTS}/ is unknown; this run records itself"
    )
EXAMPLES = rcfg.examples_used(config)  # per dataset: n_examples, at most the test split

# The software every rule runs with under --software-deployment-method conda (the venv otherwise).
CONDA_ENV = "../envs/robrep.yaml"
ID = ID_PATTERN
TRAINING = config["training"]
ACT = config["activations"]
SIM = config["similarity"]
CHECKPOINT_EPOCHS = saved_epochs(TRAINING["epochs"], TRAINING["checkpoint_every"])
METHODS = STUDY.methods
# Imported models by id (the import rule's wildcard), and the pattern matching exactly them.
EXTERNAL = {m.id: entry for m, entry in rcfg.external_models(config).items()}
EXTERNAL_PATTERN = "|".join(re.escape(i) for i in EXTERNAL) or "(?!)"
FEATURES = rcfg.feature_layers(config)

WILDCARD_MODEL = ModelKey("{dataset}", "{arch}", "{method_id}", "{seed}")
MODEL_DIR = WILDCARD_MODEL.dir(RESULTS)
MODEL_ID = WILDCARD_MODEL.id
WORK = rplan.planned_work(config, STUDY)  # every job's subject, derived once
COMPARISONS = WORK.comparisons
PROBED = WORK.probed
AUTOATTACK = config["evaluation"]["autoattack"]
AUTOATTACKED = WORK.autoattacked
# (dataset, figure, measure) of every figure drawn.
DRAWN = rplan.drawn_figures(config, STUDY, WORK)
# Every output of the run, by kind (what robrep verify checks a tree against).
EXPECTED = rplan.expected_outputs(config, STUDY, WORK)
figure_path = rplan.figure_path
# Every store a comparison or a probe reads, and the (model, checkpoint) of every adversarial
# store those read, once each.
STORES = WORK.stores
ATTACKED = WORK.attacked


def splits_path(dataset):
    return ids.splits_path(RESULTS, dataset)


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
        precision=TRAINING["precision"],
        channels_last=TRAINING["channels_last"],
        deterministic=TRAINING["deterministic"],
        evaluation=EVALUATION_ATTACK[wildcards.dataset],
        eval_batch_size=config["evaluation"]["batch_size"],
    )


def checkpoint_file(wildcards):
    model = ModelKey(
        wildcards.dataset, wildcards.arch, wildcards.method_id, wildcards.seed
    )
    return model.weights_path(RESULTS, wildcards.checkpoint)


# The store layout: activation settings only (a similarity setting never re-plans extraction).
STORE_LAYOUT = dict(
    chunk_rows=ACT.get("chunk_rows") or ACT["cka_batch_size"],
    dtype=ACT["dtype"],
    compressor=ACT["compressor"],
    max_chunk_features=ACT.get("max_chunk_features"),
    pool=ACT.get("pool"),
    cka_batch_size=ACT["cka_batch_size"],
)


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
    """The default targets: the summary, the tables, every figure and report page, and every
    activation store and adversarial store (kept as data: a deleted store is rebuilt, and with
    it its comparisons). Everything else `rplan.expected_outputs` lists is their input.
    """
    kinds = ("summary", "summary store", "table", "figure", "page", "store")
    kinds += ("adversarial examples",)
    return [path for kind in kinds for path in EXPECTED[kind]]


def job_log(rule_name, name=None):
    """A job's log: results/logs/<rule>/<name>.log, or results/logs/<rule>.log for a rule of one
    job."""
    return (
        f"{RESULTS}/logs/{rule_name}/{name}.log"
        if name
        else f"{RESULTS}/logs/{rule_name}.log"
    )


def job_benchmark(rule_name, name=None):
    """A job's Snakemake benchmark (wall and CPU seconds, peak memory), named as its log:
    results/benchmarks/<rule>/<name or rule>.tsv."""
    return f"{RESULTS}/benchmarks/{rule_name}/{name or rule_name}.tsv"


# ------------------------------------------------------------------------------------------
# Resources for schedulers: robrep.pipeline.jobs sizes every job; retries scale the requests.

# Every rule's threads, gpu, mem_mb, runtime and disk_mb: SIZER.threads/gpus(rule), resource().
SIZER = JobSizer(config, STUDY, COMPARISONS)
ATTACK_BATCH = SIZER.attack_batch
# The evaluation attack of each dataset: config evaluation with its evaluation.datasets changes.
EVALUATION_ATTACK = SIZER.evaluation


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
        # A group of GPU jobs must fit the node's GPUs too (none asks for one without them).
        limits = [("_cores", node.cores), ("mem_mb", node.mem_mb)]
        for name, limit in limits + ([("gpu", node.gpus)] if node.gpus else []):
            given = workflow.global_resources.get(name)
            given = given.value if given is not None else None
            workflow.global_resources[name] = min(given, limit) if given else limit
    return node


@functools.cache
def job_node():
    """The node every job must fit: the cluster's (`cluster_node`), or on a local run, dry runs
    included, the configured resources.node (None: no limit)."""
    return cluster_node() or rcluster.node_capacity(
        config["resources"].get("node"), ask_slurm=False
    )


def resource(rule_name, key):
    """A rule's `key` request (mem_mb, runtime, disk_mb) for a job, scaled by its attempt."""

    def value(wildcards, attempt):
        # A submitted job: the run sized it and passed the request as --resources.
        if workflow.remote_exec:
            given = workflow.global_resources.get(key).value
            if isinstance(given, int):
                return given
        try:
            return SIZER.request(rule_name, key, wildcards, attempt, job_node())
        except rcluster.ResourceRequestError as err:
            raise WorkflowError(str(err))

    return value


def _end_run(messages):
    """Called by the pending-job watch: say why, then interrupt Snakemake, which cancels the
    run's SLURM jobs and exits non-zero."""
    for message in messages:
        logger.error(message)
    os.kill(os.getpid(), signal.SIGINT)


def cluster_start():
    """Before anything is submitted: refuse a job no node holds (`job_node`; a dry run checks
    each job as its resources are evaluated); under SLURM, end the run when a submitted job can
    never start (see robrep.pipeline.cluster.PendingWatch)."""
    jobs = SIZER.planned_jobs(ATTACKED, STORES, PROBED, AUTOATTACKED)
    try:
        SIZER.check_every_job(jobs, job_node())
    except rcluster.ResourceRequestError as err:
        raise WorkflowError(str(err))
    if on_slurm() and not workflow.dryrun:
        # A process started in the background by a non-interactive shell (`snakemake ... &` in a
        # script, a CI runner) inherits SIGINT ignored, and `_end_run`'s interrupt would be lost:
        # the run then waited forever on a job that can never start.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        interval = config["resources"]["pending_check_seconds"]
        rcluster.PendingWatch(os.getcwd(), _end_run, interval=interval).start()
    elif (
        SIZER.on_gpu
        and cluster_node() is None
        and "gpu" not in workflow.global_resources
    ):
        logger.warning(
            "device: cuda on this machine: each GPU job leases a GPU of its own and waits "
            "while all are leased; pass --resources gpu=N (N: this machine's GPUs) so that "
            "Snakemake starts no more GPU jobs than that"
        )


def report_job_times():
    """After a successful run: every rule's job times from the benchmark files, beside the
    resource model's requests, into results/benchmarks/per_rule.tsv and the console."""
    requested = {}
    for rule_name, wildcards in SIZER.planned_jobs(
        ATTACKED, STORES, PROBED, AUTOATTACKED
    ):
        pattern = str(getattr(rules, rule_name).rule.benchmark)
        path = apply_wildcards(pattern, vars(wildcards))
        requested[path] = SIZER.estimate(rule_name, wildcards)
    # The run's outputs are complete whatever happens here: a bad file costs only the table.
    try:
        times = job_times.per_rule(f"{RESULTS}/benchmarks", requested)
    except (OSError, ValueError) as err:
        logger.warning(f"no table of job times ({err})")
        return
    if times:
        job_times.write_table(times, f"{RESULTS}/benchmarks/per_rule.tsv")
        logger.info("Job times by rule, from results/benchmarks/per_rule.tsv")
        logger.info(job_times.format_table(times))


def report_findings():
    """After a successful run: the findings per claim and measure, counted by verdict."""
    import csv

    path = Path(rplan.summary_path("findings.csv"))
    if not path.exists():  # a run of other targets
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    logger.info(f"Findings ({path}): robust configurations per verdict")
    logger.info(verdict_table(rows))


def remove_partial_outputs():
    """A job killed, or crashed inside a native library, runs no cleanup: its `.*.partial` stays.
    A run that starts holds Snakemake's lock on this directory, so no writer of it runs.
    """
    for path in remove_leftovers(RESULTS):
        logger.info(f"removed {path}, the partial output of an interrupted job")


onstart:
    remove_partial_outputs()
    rrecord.write_record(RESULTS, RUN_RECORD)
    cluster_start()


onsuccess:
    report_job_times()
    report_findings()
