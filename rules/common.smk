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
ANALYSES = [
    "cross_layer",
    "robust_vs_standard",
    "benign_vs_adversarial",
    "epochs",
    "threat_models",
    "seeds",
    "width_depth",
]
METHODS = {m["id"]: m for m in map(rcfg.resolve_method, config["methods"])}
TRAINING = config["training"]
CHECKPOINT_EPOCHS = rcfg.saved_epochs(TRAINING["epochs"], TRAINING["checkpoint_every"])
try:
    ACTIVATION_CHECKPOINTS = rcfg.activation_checkpoints(config)
except rcfg.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}")


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


# ------------------------------------------------------------------------------------------
# Activation stores and the comparisons each analysis asks for.

ACT = config["activations"]
SIM = config["similarity"]
CHUNK_ROWS = ACT.get("chunk_rows") or SIM["batch_size"]
if isinstance(ACT["layers"], list):
    from robrep.models import build_model

    for arch in config["architectures"]:
        try:
            build_model(arch, 3, 10, [0.5] * 3, [0.5] * 3).probe_layers(ACT["layers"])
        except ValueError as err:
            raise WorkflowError(f"invalid config: activations.layers: {err}")


def store(model, checkpoint="final", inputs="benign"):
    """An activation store's identity: a model's wildcards plus checkpoint and input kind."""
    return dict(model, checkpoint=checkpoint, inputs=inputs)


def store_path(s):
    """results/activations/{dataset}/{arch}/{method_id}/seed{seed}/{checkpoint}/{inputs}.zarr"""
    return f"{RESULTS}/activations/{s['dataset']}/{s['arch']}/{s['method_id']}/seed{s['seed']}/{s['checkpoint']}/{s['inputs']}.zarr"


def store_tag(s):
    return (
        f"{s['arch']}.{s['method_id']}.seed{s['seed']}.{s['checkpoint']}.{s['inputs']}"
    )


def arch_family(arch):
    """Architectures that differ only in width/depth share a family (for width_depth)."""
    if arch.startswith("wrn-"):
        return "wrn"
    if arch.startswith("convnet"):
        return "convnet"
    return arch


def comparisons():
    """Every (analysis, dataset, pair) -> (store_a, store_b) the config asks for.

    Pairs grow with what each analysis needs (per model, per robust model, per seed pair, ...),
    never as all models x all models.
    """
    analyses = set(config["analyses"])
    pgd_inputs = "pgd" in ACT["inputs"]
    out = {}

    def add(analysis, a, b):
        key = (analysis, a["dataset"], f"{store_tag(a)}__{store_tag(b)}")
        out[key] = (a, b)

    models = all_models()
    for m in models:
        final = store(m)
        if "cross_layer" in analyses:
            add("cross_layer", final, final)
            if pgd_inputs:
                add("cross_layer", store(m, inputs="pgd"), store(m, inputs="pgd"))
        if "benign_vs_adversarial" in analyses and pgd_inputs:
            add("benign_vs_adversarial", final, store(m, inputs="pgd"))
        if "epochs" in analyses:
            for ck in ACTIVATION_CHECKPOINTS:
                if ck != "final":
                    add("epochs", store(m, checkpoint=ck), final)
        if (
            "robust_vs_standard" in analyses
            and m["method_id"] != "standard"
            and "standard" in METHODS
        ):
            add("robust_vs_standard", final, store(dict(m, method_id="standard")))
    for m in models:
        method = METHODS[m["method_id"]]
        if "threat_models" in analyses and method["norm"] == "linf":
            for other_id, other in METHODS.items():
                if other["norm"] == "l2" and other["method"] == method["method"]:
                    add("threat_models", store(m), store(dict(m, method_id=other_id)))
        if "seeds" in analyses:
            for s in config["seeds"]:
                if s > m["seed"]:
                    add("seeds", store(m), store(dict(m, seed=s)))
        if "width_depth" in analyses:
            for arch in config["architectures"]:
                if arch_family(arch) == arch_family(m["arch"]) and config[
                    "architectures"
                ].index(arch) > config["architectures"].index(m["arch"]):
                    add("width_depth", store(m), store(dict(m, arch=arch)))
    return out


COMPARISONS = comparisons()


def comparison_path(analysis, dataset, pair):
    return f"{RESULTS}/similarity/{analysis}/{dataset}/{pair}.nc"


def comparison_stores(wildcards):
    a, b = COMPARISONS[(wildcards.analysis, wildcards.dataset, wildcards.pair)]
    return {"a": store_path(a), "b": store_path(b)}


def checkpoint_file(wildcards):
    base = model_dir(
        wildcards.dataset, wildcards.arch, wildcards.method_id, wildcards.seed
    )
    if wildcards.checkpoint == "final":
        return f"{base}/model.safetensors"
    if wildcards.checkpoint == "best":
        return f"{base}/best.safetensors"
    return f"{base}/checkpoints/{wildcards.checkpoint}.safetensors"


def all_targets():
    """The default targets: the summary dataset, the accuracy table, every figure, and every
    activation store (kept as data: a deleted store is rebuilt, and with it its comparisons).
    """
    stores = sorted({store_path(s) for pair in COMPARISONS.values() for s in pair})
    return (
        [f"{RESULTS}/summary/similarity.zarr", f"{RESULTS}/summary/accuracy.csv"]
        + [f"{RESULTS}/figures/{name}.png" for name in FIGURES]
        + stores
    )


# ------------------------------------------------------------------------------------------
# Resources for schedulers, derived from the config (see robrep.resources); retries scale them.

from robrep import resources as rres

GFLOPS = config["resources"]["gflops"]
GPU = 1 if config["device"] == "cuda" else 0


def _cost(dataset, arch):
    geo = rres.dataset_geometry(dataset, config["dataset_options"].get(dataset, {}))
    layers = ACT["layers"] if isinstance(ACT["layers"], str) else "all"
    return geo, rres.model_cost(arch, geo.channels, geo.size, geo.classes, layers)


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
        return est[key] * attempt

    return value


def extract_resource(key):
    def value(wildcards, attempt):
        geo, cost = _cost(wildcards.dataset, wildcards.arch)
        steps = config["evaluation"]["steps"] if wildcards.inputs == "pgd" else 0
        est = rres.extract_resources(
            geo, cost, ACT["n_examples"], ACT["batch_size"], steps, GFLOPS
        )
        return est[key] * attempt

    return value


def similarity_resource(key):
    def value(wildcards, attempt):
        a, b = COMPARISONS[(wildcards.analysis, wildcards.dataset, wildcards.pair)]
        _, cost_a = _cost(a["dataset"], a["arch"])
        _, cost_b = _cost(b["dataset"], b["arch"])
        full = any(m != "minibatch_cka" for m in SIM["metrics"])
        est = rres.similarity_resources(
            cost_a, cost_b, ACT["n_examples"], SIM["batch_size"], full, GFLOPS
        )
        return est[key] * attempt

    return value
