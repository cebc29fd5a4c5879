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

from robrep.checksums import read_json
from robrep.models import build_model

from workflow_helpers import TINY, job_counts, make_workdir, planned_jobs, snakemake

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
    from robrep.data import read_splits, to_float

    splits = read_splits(results / "data/digits/splits.npz")
    for name, method in (("standard", "standard"), ("robust", "pgd-linf-eps0.1")):
        metrics = read_json(results / f"models/digits/convnet/{method}/seed0/metrics.json")
        assert metrics["external"]["name"] == f"their-{name}"
        with torch.no_grad():
            logits = models[name](to_float(splits.x_test))
        direct = (logits.argmax(1).numpy() == splits.y_test).mean()
        assert metrics["test"]["clean_acc"] == pytest.approx(direct)
    ds = xr.load_dataset(results / "summary/similarity.nc", engine="h5netcdf")
    analyses = set(ds.analysis.values.tolist())
    assert {"cross_layer", "robust_vs_standard", "transfer", "benign_vs_adversarial"} <= analyses
    assert "epochs" not in analyses  # imported models have their final weights only
    assert np.isfinite(
        ds.robust_vs_standard_mean_diag.values[ds.model_method_id == "pgd-linf-eps0.1"]
    ).all()
    csv = (results / "summary/accuracy.csv").read_text().splitlines()
    assert len(csv) == 3
    assert len(list((results / "figures").glob("*.png"))) >= 8
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
