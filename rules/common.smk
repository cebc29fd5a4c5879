# Configuration checks, model ids and every path of the workflow, derived in one place.
import yaml
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from robrep import config as rcfg
from robrep.data import DATASETS
from robrep.models import check_architecture


SCHEMA_PATH = Path(workflow.basedir) / "config" / "schema.yaml"
try:
    rcfg.check_unknown_keys(config, yaml.safe_load(SCHEMA_PATH.read_text()))
    rcfg.check_config(config, list(DATASETS), check_architecture)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")
validate(config, "../config/schema.yaml")

RESULTS = "results"
ID = "[A-Za-z0-9._-]+"
METHODS = {m["id"]: m for m in map(rcfg.resolve_method, config["methods"])}
TRAINING = config["training"]
CHECKPOINT_EPOCHS = [
    e
    for e in range(1, TRAINING["epochs"] + 1)
    if e % TRAINING["checkpoint_every"] == 0
]
try:
    ACTIVATION_CHECKPOINTS = rcfg.activation_checkpoints(config)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")


wildcard_constraints:
    dataset=ID,
    arch=ID,
    method_id=ID,
    seed=r"\d+",
    checkpoint=r"final|best|epoch\d+",
    inputs="benign|pgd",


def model_dir(dataset, arch, method_id, seed):
    """The one place a model's directory is spelled: results/models/{dataset}/{arch}/{method_id}/seed{seed}."""
    return f"{RESULTS}/models/{dataset}/{arch}/{method_id}/seed{seed}"


MODEL_DIR = model_dir("{dataset}", "{arch}", "{method_id}", "{seed}")
MODEL_ID = "{dataset}/{arch}/{method_id}/seed{seed}"


def all_models():
    """Every trained model as a dict of wildcards, in config order."""
    return [
        dict(dataset=d, arch=a, method_id=m, seed=s)
        for d in config["datasets"]
        for a in config["architectures"]
        for m in METHODS
        for s in config["seeds"]
    ]


def splits_path(dataset):
    return f"{RESULTS}/data/{dataset}/splits.npz"


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


def evaluation_attack():
    ev = dict(config["evaluation"])
    ev["eps"] = rcfg.parse_eps(ev["eps"], "evaluation.eps")
    ev.pop("batch_size", None)
    return ev


def all_targets():
    targets = [f"{model_dir(**m)}/metrics.json" for m in all_models()]
    return targets
