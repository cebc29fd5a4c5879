"""Integration: external models join the real workflow (imports instead of training), alone or
beside trained models."""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import pytest
import torch
import xarray as xr

from robrep.io.checksums import read_json
from robrep.learn.models import build_model

from helpers.external import RB_ARCH, robustbench_checkpoint, robustbench_or_skip
from helpers.files import write_cifar10
from helpers.workflow import TINY, job_counts, make_workdir, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration

EXTERNAL = [
    {
        "name": "their-standard",
        "dataset": "digits",
        "arch": "convnet",
        "checkpoint": "checkpoints/standard.pt",
        "normalize": {"mean": [0.3], "std": [0.3]},
        "method": {"method": "standard"},
    },
    {
        "name": "their-robust",
        "dataset": "digits",
        "arch": "convnet",
        "checkpoint": "checkpoints/robust.pth.tar",
        "state_dict_key": "state_dict",
        "normalize": {"mean": [0.3], "std": [0.3]},
        "method": {"method": "pgd", "norm": "linf", "eps": 0.1},
    },
]


def write_checkpoints(workdir):
    """A plain torch state dict and a release-style {'state_dict': {'module.'...}, 'epoch'}."""
    (workdir / "checkpoints").mkdir()
    models = {}
    for seed, (name, path) in enumerate(
        (("standard", "standard.pt"), ("robust", "robust.pth.tar"))
    ):
        torch.manual_seed(seed)
        model = build_model("convnet", 1, 10, [0.3], [0.3]).train()
        with torch.no_grad():
            model(torch.rand(32, 1, 8, 8))
        state = {k: v for k, v in model.eval().state_dict().items() if "normalize" not in k}
        if name == "robust":
            state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9}
        torch.save(state, workdir / "checkpoints" / path)
        models[name] = model
    return models


@pytest.fixture(scope="module")
def external_run(tmp_path_factory):
    """External models only: no architectures, methods or seeds to train."""
    config = {k: v for k, v in copy.deepcopy(TINY).items() if k not in ("architectures", "methods")}
    config.pop("seeds")
    config["external_models"] = EXTERNAL
    workdir = make_workdir(tmp_path_factory.mktemp("ext"), config)
    models = write_checkpoints(workdir)
    out = snakemake(workdir)
    return workdir, models, out.stdout + out.stderr


def test_external_models_only_run_end_to_end(external_run):
    workdir, models, log = external_run
    assert "rule train:" not in log and "rule import_model:" in log
    results = workdir / "results"
    from robrep.learn.data import read_splits, to_float

    splits = read_splits(results / "data/digits/splits.npz")
    for name, method in (("standard", "standard"), ("robust", "pgd-linf-eps0.1")):
        metrics = read_json(results / f"models/digits/convnet/{method}/seed0/metrics.json")
        assert metrics["external"]["name"] == f"their-{name}"
        with torch.no_grad():
            logits = models[name](to_float(splits.x_test))
        direct = (logits.argmax(1).numpy() == splits.y_test).mean()
        assert metrics["test"]["clean_acc"] == pytest.approx(direct)
    ds = xr.load_dataset(results / "summary/similarity.nc", engine="h5netcdf")
    ds = ds.sel(measure="minibatch_cka")
    analyses = set(ds.analysis.values.tolist())
    assert {"cross_layer", "robust_vs_standard", "transfer", "benign_vs_adversarial"} <= analyses
    assert "epochs" not in analyses  # imported models have their final weights only
    assert np.isfinite(
        ds.robust_vs_standard_mean_diag.values[ds.model_method_id == "pgd-linf-eps0.1"]
    ).all()
    csv = (results / "summary/accuracy.csv").read_text().splitlines()
    assert len(csv) == 3
    import csv as csvlib

    rows = {r["method_id"]: r for r in csvlib.DictReader(csv)}
    for name, method in (("standard", "standard"), ("robust", "pgd-linf-eps0.1")):
        metrics = read_json(results / f"models/digits/convnet/{method}/seed0/metrics.json")
        row = rows[method]  # the imported model named: entry, checkpoint file, its SHA-256
        assert row["external"] == f"their-{name}"
        assert row["external_checkpoint"] == metrics["external"]["checkpoint"]
        assert row["external_sha256"] == metrics["external"]["sha256"]
        assert len(row["external_sha256"]) == 64
    assert set(ds.model_external.values.tolist()) == {"their-standard", "their-robust"}
    assert len(list((results / "figures").glob("*/*.png"))) >= 8
    assert "Nothing to be done" in (o := snakemake(workdir, "-n")).stdout + o.stderr


def test_changed_checkpoint_reruns_that_model_only(external_run):
    workdir = external_run[0]
    checkpoint = workdir / "checkpoints/robust.pth.tar"
    stat, original = checkpoint.stat(), checkpoint.read_bytes()
    changed = torch.load(checkpoint, weights_only=True)
    changed["state_dict"]["module.head.logits.bias"] += 1.0  # new weights, a new file
    torch.save(changed, checkpoint)
    try:
        out = snakemake(workdir, "-n").stdout
    finally:
        checkpoint.write_bytes(original)
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    counts = job_counts(out)
    assert counts["import_model"] == 1 and "train" not in counts
    for job in planned_jobs(out):
        if job["rule"] in ("import_model", "attack", "probe", "autoattack"):
            assert "pgd-linf-eps0.1" in job["wildcards"], job


def test_external_and_trained_models_are_compared(tmp_path):
    """TINY trains the standard model; the robust one is imported: robust_vs_standard and
    transfer pair them."""
    config = copy.deepcopy(TINY)
    config["methods"] = [{"method": "standard"}]
    config["external_models"] = [dict(EXTERNAL[1], normalize="none", seed=0)]
    workdir = make_workdir(tmp_path, config)
    write_checkpoints(workdir)
    out = snakemake(workdir, "-n").stdout
    counts = job_counts(out)
    assert counts["train"] == 1 and counts["import_model"] == 1
    pairs = [
        j["output"]
        for j in planned_jobs(out)
        if re.search(r"analysis=(robust_vs_standard|transfer)", j["wildcards"])
    ]
    assert len(pairs) == 4  # benign, pgd; both transfer directions
    assert all(
        "convnet.pgd-linf-eps0.1.seed0" in p and "convnet.standard.seed0" in p for p in pairs
    )


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            {"checkpoint": "checkpoints/missing.pt"},
            r"external_models\[0\]\.checkpoint: 'checkpoints/missing\.pt' is not a file",
        ),
        ({"arch": "torchvision-resnet1000"}, r"torchvision has no classifier 'resnet1000'"),
        (
            {"dataset": "cifar10"},
            r"external_models\[0\]\.dataset: 'cifar10' is not one of the study's datasets",
        ),
        (
            {"method": {"method": "pgd", "norm": "linf"}},
            r"external_models\[0\]\.method: pgd needs norm and eps",
        ),
    ],
)
def test_bad_external_entries_stop_before_any_job(tmp_path, change, pattern):
    config = copy.deepcopy(TINY)
    config["external_models"] = [dict(EXTERNAL[1], **change)]
    workdir = make_workdir(tmp_path, config)
    write_checkpoints(workdir)
    out = snakemake(workdir, "-n", check=False)
    assert out.returncode != 0
    assert re.search(pattern, out.stdout + out.stderr), (out.stdout + out.stderr)[-2000:]


def test_torchvision_models_probe_every_call_of_reused_modules(tmp_path):
    """Two torchvision ResNet-18 checkpoints, `layers: all`: the block ReLU that runs twice per
    block is stored and compared once per call (`...relu@1`, `...relu@2`), end to end."""
    from torchvision.models import resnet18

    config = {k: v for k, v in copy.deepcopy(TINY).items() if k not in ("architectures", "methods")}
    config.pop("seeds")
    config["dataset_options"] = {"digits": {"image_size": 16, "channels": 3}}
    config["evaluation"]["autoattack"]["n_examples"] = 0
    config["activations"] = {**config["activations"], "layers": "all", "features": "none"}
    config["similarity"] = {"metrics": ["minibatch_cka"], "intervals": False}
    config["analyses"] = ["cross_layer", "robust_vs_standard"]
    config["probes"] = {"folds": 0}
    config["external_models"] = [
        {
            "name": f"tv-{method['method']}",
            "dataset": "digits",
            "arch": "torchvision-resnet18",
            "checkpoint": f"checkpoints/{method['method']}.pth",
            "method": method,
        }
        for method in ({"method": "standard"}, {"method": "pgd", "norm": "linf", "eps": 0.1})
    ]
    workdir = make_workdir(tmp_path, config)
    (workdir / "checkpoints").mkdir()
    for seed, entry in enumerate(config["external_models"]):
        torch.manual_seed(seed)
        torch.save(resnet18(num_classes=10).state_dict(), workdir / entry["checkpoint"])
    snakemake(workdir, "results/summary/similarity.nc")
    ds = xr.load_dataset(workdir / "results/summary/similarity.nc", engine="h5netcdf")
    ds = ds.sel(measure="minibatch_cka")
    pairs = np.flatnonzero(ds.analysis.values == "robust_vs_standard")
    assert len(pairs) == 2  # on benign and on adversarial inputs
    for c in pairs:
        layers = ds.layer_name_a.values[c].tolist()
        assert len(layers) == 60 and layers == ds.layer_name_b.values[c].tolist()
        assert layers.index("net.layer1.0.relu@1") < layers.index("net.layer1.0.conv2")
        assert layers.index("net.layer1.0.bn2") < layers.index("net.layer1.0.relu@2")
        similarity = ds.similarity.values[c]
        assert similarity.shape == (60, 60) and np.isfinite(similarity).all()


def test_robustbench_model_runs_end_to_end(tmp_path):
    """A RobustBench zoo model from a local model_dir (RobustBench's layout) on a CIFAR-10
    directory in the shipped format: import, extraction, comparison and summary."""
    robustbench_or_skip()
    config = {k: v for k, v in copy.deepcopy(TINY).items() if k not in ("architectures", "methods")}
    config.pop("seeds")
    config.pop("dataset_options")
    config["datasets"] = ["cifar10"]
    config["evaluation"].update(eps="8/255", steps=2)
    config["evaluation"]["autoattack"]["n_examples"] = 0
    config["activations"] = {
        "n_examples": 20,
        "cka_batch_size": 10,
        "passes": 1,
        "inputs": ["benign"],
    }
    config["similarity"] = {"metrics": ["minibatch_cka"], "intervals": False}
    config["analyses"] = ["cross_layer"]
    config["probes"] = {"folds": 0}
    workdir = make_workdir(tmp_path, config)
    write_cifar10(workdir / "data", per_batch=8, test=24)
    reference, checkpoint = robustbench_checkpoint(workdir / "models")
    config["external_models"] = [
        {
            "name": "ding-mma",
            "dataset": "cifar10",
            "arch": RB_ARCH,
            "checkpoint": str(checkpoint.relative_to(workdir)),
            "method": {"method": "pgd", "norm": "linf", "eps": "8/255"},
        }
    ]
    write_config(workdir, config)
    snakemake(workdir)
    results = workdir / "results"
    from robrep.learn.data import read_splits, to_float

    model_dir = results / f"models/cifar10/{RB_ARCH}/pgd-linf-eps8_255/seed0"
    metrics = read_json(model_dir / "metrics.json")
    splits = read_splits(results / "data/cifar10/splits.npz")
    with torch.no_grad():
        logits = reference(to_float(splits.x_test))
    direct = (logits.argmax(1).numpy() == splits.y_test).mean()
    assert metrics["test"]["clean_acc"] == pytest.approx(direct)
    assert metrics["external"]["name"] == "ding-mma"
    ds = xr.load_dataset(results / "summary/similarity.nc", engine="h5netcdf")
    ds = ds.sel(measure="minibatch_cka")
    assert ds.sizes["layer_a"] == 7  # the zoo WRN's blocks: conv1, block1-3, bn1, relu, fc
    assert np.isfinite(ds.similarity.values).all()
