"""Integration: run the real Snakemake workflow on a tiny config in a temporary directory."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import xarray as xr

from robrep.io.checksums import read_json
from robrep.io.xrio import read_netcdf
from robrep.store.read import ActivationStore

from helpers.workflow import TINY, dry_run_with, job_counts, make_workdir, planned_jobs, snakemake

pytestmark = pytest.mark.integration


def test_full_run_outputs(completed_run):
    wd = completed_run
    model = wd / "results/models/digits/convnet/pgd-linf-eps0.1/seed0"
    for name in (
        "model.safetensors",
        "best.safetensors",
        "checkpoints/epoch1.safetensors",
        "metrics.json",
    ):
        assert (model / name).is_file(), name
    assert (wd / "results/logs/train/digits/convnet/pgd-linf-eps0.1/seed0.log").stat().st_size > 0
    store = wd / "results/activations/digits/convnet/pgd-linf-eps0.1/seed0/final/pgd.zarr"
    assert store.is_dir()
    ds = xr.open_zarr(wd / "results/summary/similarity.zarr", consolidated=False)
    assert {"comparison", "layer_a", "layer_b", "model"} <= set(ds.dims) and "metric" not in ds.dims
    measures = ["minibatch_cka", "minibatch_rbf_cka", "minibatch_mutual_knn"]
    assert list(ds.measure.values) == measures
    assert ds.similarity.dims == ("measure", "comparison", "layer_a", "layer_b")
    assert ds.block_score.dims == ("measure", "model") and ds.clean_acc.dims == ("model",)
    # The permutation null (default 20 draws) sits below the benign cross-layer diagonal (1),
    # under every measure.
    cross = (ds.analysis == "cross_layer").values & (ds.inputs == "benign").values
    null = ds.cka_null_upper.values[:, cross]
    assert np.all(np.nan_to_num(np.diagonal(null, axis1=2, axis2=3), nan=0.0) < 0.9)
    diagonal = np.diagonal(ds.similarity.values[:, cross], axis1=2, axis2=3)
    np.testing.assert_allclose(diagonal[np.isfinite(diagonal)], 1.0, atol=1e-6)
    for coord in (
        "analysis",
        "dataset",
        "arch",
        "method",
        "norm",
        "eps",
        "seed",
        "checkpoint",
        "method_b",
        "seed_b",
        "layer_name_a",
        "model_method_id",
        "model_eps",
    ):
        assert coord in ds.coords, coord
    assert list(ds.full_metric.values) == ["linear_cka_debiased", "svcca"]
    assert ds.full_similarity.dims == ("comparison", "full_metric", "feature_a", "feature_b")
    analyses = sorted(set(ds.analysis.values.tolist()))
    assert analyses == [
        "benign_vs_adversarial",
        "cross_layer",
        "epochs",
        "robust_vs_standard",
        "transfer",
    ]
    robust_model = ds.model_method_id.values != "standard"
    for name in (
        "robust_vs_standard_mean_diag_pgd",
        "transfer_standard_to_robust_mean_diag",
        "transfer_robust_to_standard_mean_diag",
    ):
        robust = ds[name].values[:, robust_model]
        assert np.isfinite(robust).all() and np.all((-1 <= robust) & (robust <= 1)), name
    summary, ds = ds, ds.sel(measure="minibatch_cka")  # the rest as linear CKA reads it
    depth = ds["transfer_depth_below_0.9"].values  # NaN: never below 0.9
    assert np.isnan(depth[~robust_model]).all()
    assert np.all(np.isnan(depth[robust_model]) | ((0 <= depth) & (depth <= 1))[robust_model])
    assert "config" in ds.attrs and "versions" in ds.attrs
    for name in ("clean_acc", "robust_acc", "block_score", "best_final_drop"):
        assert name in ds
    # #13: jackknife interval of the block score, class-conditional CKA, linear probes, seed
    # baselines (NaN: one seed) and the paper's claims (no seed baseline to hold them against).
    benign = np.flatnonzero(ds.model_method_id.values == "standard")
    low, high = ds.block_score_low.values[benign], ds.block_score_high.values[benign]
    assert np.all(low <= ds.block_score.values[benign]) and np.all(
        ds.block_score.values[benign] <= high
    )
    assert ds.cka_by_class.dims == ("comparison", "class", "layer_a", "layer_b")
    assert list(ds.coords["class"].values) == list(range(10))  # with the full-data metrics
    probes = wd / "results/probes/digits/convnet/standard/seed0/final/benign.nc"
    assert probes.is_file()
    accuracy = ds.probe_accuracy.values
    assert np.isfinite(accuracy).any() and np.nanmax(accuracy) <= 1.0
    assert np.isnan(ds.seed_effect.values).all() and np.isnan(ds.block_score_seed_range).all()
    # AutoAttack on the same 32 test images as PGD: never above PGD, never above clean, for the
    # robust model (#11); both models have a result, the accuracy table shows them side by side.
    result = read_json(model / "autoattack.json")
    assert result["n_examples"] == 32 and result["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"]
    assert result["autoattack_acc"] <= result["pgd_acc"] <= result["clean_acc"]
    assert result["largest_perturbation"] <= 0.1 + 1e-6
    assert np.isfinite(ds.autoattack_acc.values).all() and "gradient_masking" in ds
    findings = (wd / "results/summary/findings.csv").read_text().splitlines()
    assert findings[0].startswith("claim,measure,dataset,arch,method_id,robust,standard,")
    assert all(line.endswith("no seed baseline") for line in findings[1:]) and len(findings) > 1
    claims = {tuple(line.split(",")[:2]) for line in findings[1:]}
    assert {("block_structure", m) for m in measures} <= claims
    assert ("specialisation_probe", "linear_probe") in claims
    nc = xr.load_dataset(wd / "results/summary/similarity.nc", engine="h5netcdf")
    assert nc.sizes == summary.sizes
    for name in nc.data_vars:  # every number is traced to what computed it, in both files
        for attrs in (nc[name].attrs, summary[name].attrs):
            assert attrs["long_name"] and attrs["description"], name
            assert attrs["computed_by"].startswith("robrep."), name
    assert nc.block_score.attrs["analysis"] == "cross_layer"
    figures = sorted(p.name for p in (wd / "results/figures/digits").glob("*.png"))
    assert "transfer_diagonal.png" in figures and "robust_vs_standard_matrix.png" in figures
    assert len(figures) == 10 and len(list((wd / "results/figures").rglob("*.png"))) == 16
    for measure in measures[1:]:  # the claims' figures again under each other measure
        drawn = sorted(p.name for p in (wd / f"results/figures/digits/{measure}").glob("*.png"))
        assert drawn == [
            "block_score_vs_eps.png",
            "cross_layer_heatmaps.png",
            "robust_vs_standard_diagonal.png",
        ]
    for fig in (wd / "results/figures/digits").rglob("*.png"):
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
        assert b"<svg" in fig.with_suffix(".svg").read_bytes()[:2000]  # for papers
        numbers = fig.with_suffix(".csv").read_text().splitlines()  # what the figure draws
        assert numbers[0] == "panel,series,quantity,x,y,value"
    csv = (wd / "results/summary/accuracy.csv").read_text().splitlines()
    assert csv[0].startswith("id,dataset,arch") and len(csv) == 3
    header = csv[0].split(",")
    assert {"robust_acc", "autoattack_acc", "autoattack_pgd_acc", "gradient_masking"} <= set(header)


def test_every_job_leaves_a_benchmark_and_the_run_sums_them_per_rule(completed_run):
    import csv

    root = completed_run / "results/benchmarks"
    rules = {"prepare_data", "train", "attack", "autoattack", "extract", "similarity", "probe"}
    rules |= {"aggregate", "figures", "report_pages"}
    assert {p.name for p in root.iterdir() if p.is_dir()} == rules
    comparisons = list((completed_run / "results/similarity").rglob("*.nc"))
    assert len(list((root / "similarity").rglob("*.tsv"))) == len(comparisons)
    with open(root / "per_rule.tsv", newline="") as fh:
        table = {row["rule"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert set(table) == rules
    assert int(table["similarity"]["jobs"]) == len(comparisons)
    for rule, row in table.items():
        assert float(row["wall_s"]) > 0, rule
        if rule in {"prepare_data", "aggregate", "figures", "report_pages"}:  # not sized
            assert row["max_wall_over_runtime"] == "", rule
        else:  # every sized job ran well inside the runtime and memory it would ask SLURM for
            assert 0 < float(row["max_wall_over_runtime"]) < 1, (rule, row)
            assert 0 < float(row["max_rss_over_mem_mb"]) < 1, (rule, row)


def test_transfer_stores_see_exactly_the_source_models_stored_examples(completed_run):
    """The adversarial images are stored once per model and checkpoint, within the attack's
    bound; a transfer store is the target model on exactly the source's stored images."""
    from robrep.learn.adversarial import read_adversarial
    from robrep.learn.data import evaluation_subset, read_splits, to_float
    from robrep.learn.loading import load_model

    results = completed_run / "results"
    splits = read_splits(results / "data/digits/splits.npz")
    idx = evaluation_subset(splits.y_test, 64, 0)  # TINY: n_examples 64, split_seed 0
    clean = to_float(splits.x_test[idx]).numpy()
    models = results / "models/digits/convnet"
    for method in ("standard", "pgd-linf-eps0.1"):
        adv = read_adversarial(results / f"adversarial/digits/convnet/{method}/seed0/final.zarr")
        np.testing.assert_array_equal(adv.sample_ids, idx)
        np.testing.assert_array_equal(adv.labels, splits.y_test[idx])
        assert np.abs(adv.images - clean).max() <= 0.1 + 1e-6  # evaluation eps, Linf
        assert adv.images.min() >= 0 and adv.images.max() <= 1
        assert adv.attrs["source_model_id"] == f"digits/convnet/{method}/seed0"
        assert adv.attrs["attack"]["eps"] == 0.1 and adv.attrs["attack"]["steps"] == 3
    source = read_adversarial(results / "adversarial/digits/convnet/standard/seed0/final.zarr")
    store = ActivationStore(
        results / "activations/digits/convnet/pgd-linf-eps0.1/seed0/final/transfer-standard.zarr"
    )
    assert store.attrs["source_model_id"] == "digits/convnet/standard/seed0"
    assert store.attrs["attack"] == source.attrs["attack"]
    target, _ = load_model(models / "pgd-linf-eps0.1/seed0/model.safetensors")
    with torch.no_grad():  # the first stored chunk: the extraction's own first batch
        logits = target(torch.from_numpy(source.images[:32])).numpy()
    np.testing.assert_array_equal(store.layer("head.logits")[:32], logits)
    own = ActivationStore(results / "activations/digits/convnet/standard/seed0/final/pgd.zarr")
    assert own.attrs["source_model_id"] == "digits/convnet/standard/seed0"


def test_one_attack_job_per_model_checkpoint_feeds_several_stores(completed_run):
    out = snakemake(completed_run, "-n", "--forceall").stdout
    jobs = planned_jobs(out)
    attacks = [job["output"] for job in jobs if job["rule"] == "attack"]
    assert sorted(a.split("/")[4] for a in attacks) == ["pgd-linf-eps0.1", "standard"]
    for path in attacks:
        readers = [j for j in jobs if j["rule"] == "extract" and path in j["input"].split(", ")]
        kinds = sorted(re.search(r"inputs=([\w.-]+)", j["wildcards"]).group(1) for j in readers)
        # Its own pgd store and the other model's transfer store: no attack is repeated.
        assert kinds == ["pgd", f"transfer-{path.split('/')[4]}"], (path, kinds)


def test_a_new_cka_partition_reextracts_but_never_recrafts_adversarial_examples(completed_run):
    activations = {**TINY["activations"], "cka_batch_size": 16}
    counts = job_counts(dry_run_with(completed_run, {**TINY, "activations": activations}))
    assert counts.get("extract") and counts.get("similarity")
    assert "attack" not in counts and "train" not in counts, counts


def test_unknown_transfer_source_is_refused_naming_the_sources(completed_run):
    target = "results/activations/digits/convnet/standard/seed0/final/transfer-pgd-linf-eps9.zarr"
    out = snakemake(completed_run, "-n", target, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "the source model digits/convnet/pgd-linf-eps9/seed0 is not in the study" in text
    assert "sources: digits/convnet/standard/seed0, digits/convnet/pgd-linf-eps0.1/seed0" in text


def test_nothing_to_do_after_complete_run(completed_run):
    out = snakemake(completed_run, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_dag_pairs_for_each_analysis(completed_run):
    """Each similarity job's inputs, read off the planned DAG, are the stores its analysis pairs."""
    out = snakemake(completed_run, "-n", "--forceall").stdout
    jobs = {}
    for job in planned_jobs(out):
        if job["rule"] != "similarity":
            continue
        analysis = re.search(r"analysis=(\w+)", job["wildcards"]).group(1)
        stores = sorted(
            "/".join(path.split("/")[4:]).removesuffix(".zarr").replace("/seed0", "")
            for path in job["input"].split(", ")
        )
        jobs.setdefault(analysis, []).append(stores)
    assert sorted(jobs["robust_vs_standard"]) == [
        ["pgd-linf-eps0.1/final/benign", "standard/final/benign"],
        ["pgd-linf-eps0.1/final/pgd", "standard/final/pgd"],
    ]
    assert sorted(jobs["transfer"]) == [
        ["pgd-linf-eps0.1/final/pgd", "standard/final/transfer-pgd-linf-eps0.1"],
        ["pgd-linf-eps0.1/final/transfer-standard", "standard/final/pgd"],
    ]
    assert sorted(jobs["benign_vs_adversarial"]) == [
        ["pgd-linf-eps0.1/final/benign", "pgd-linf-eps0.1/final/pgd"],
        ["pgd-linf-eps0.1/final/benign", "pgd-linf-eps0.1/final/transfer-standard"],
        ["standard/final/benign", "standard/final/pgd"],
        ["standard/final/benign", "standard/final/transfer-pgd-linf-eps0.1"],
    ]
    assert sorted(jobs["cross_layer"]) == [
        ["pgd-linf-eps0.1/final/benign"] * 2,
        ["pgd-linf-eps0.1/final/pgd"] * 2,
        ["standard/final/benign"] * 2,
        ["standard/final/pgd"] * 2,
    ]
    assert sorted(jobs["epochs"]) == [
        ["pgd-linf-eps0.1/best/benign", "pgd-linf-eps0.1/final/benign"],
        ["pgd-linf-eps0.1/epoch1/benign", "pgd-linf-eps0.1/final/benign"],
        ["standard/best/benign", "standard/final/benign"],
        ["standard/epoch1/benign", "standard/final/benign"],
    ]
    assert "seeds" not in jobs and "threat_models" not in jobs


def test_adding_a_seed_schedules_only_its_jobs(completed_run, tmp_path):
    wd = completed_run
    out = dry_run_with(wd, dict(TINY, seeds=[0, 1]))
    counts = job_counts(out)
    assert counts["train"] == 2 and "prepare_data" not in counts
    # 2 new models x (final benign, final pgd, epoch1, best) + 2 transfer stores
    assert counts["extract"] == 10 and counts["attack"] == 2
    # cross_layer 4 + benign_vs_adversarial 4 + epochs 4 + robust_vs_standard 2 + transfer 2
    # + seeds 2
    assert counts["similarity"] == 18
    assert counts["aggregate"] == 1 and counts["figures"] == 1
    assert counts["probe"] == 2  # the new models' final benign stores
    assert "seed1" in out
    jobs = planned_jobs(out)
    for job in jobs:
        if job["rule"] in ("train", "extract", "attack"):
            assert "seed=1" in job["wildcards"], job
        if job["rule"] == "similarity":
            assert "seed1" in job["wildcards"], job


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"datasets": ["mnist"]}, r"datasets\[0\]: unknown dataset 'mnist'.*valid: digits"),
        ({"architectures": ["resnet50"]}, r"unknown architecture 'resnet50'; valid: convnet"),
        (
            {"methods": [{"method": "pgd", "norm": "linf", "eps": -1}]},
            r"methods\[0\]\.eps: -1 must be a finite number >= 0",
        ),
        (
            {"methods": [{"method": "standard", "eps": 0.1}]},
            r"methods\[0\]\.eps: 0\.1 given for method 'standard'",
        ),
        ({"trainig": {}}, r"unknown config key 'trainig' \(did you mean 'training'\?\)"),
        ({"architectures": ["../x"]}, r"architectures\[0\]: '\.\./x' cannot be used in a path"),
        (
            {"training": {"epochs": 2, "checkpoint_every": 1, "schedule": "linear"}},
            r"'linear' is not one of \['cosine', 'step', 'constant'\]",
        ),
        ({"activations": {"checkpoints": [5]}}, r"epoch 5 is not saved by training"),
        (
            {"activations": {"features": "none"}},
            r"similarity\.metrics: 'linear_cka_debiased' needs raw features, but "
            r"activations\.features is 'none'",
        ),
        (
            {"activations": {"features": ["stage9"]}},
            r"activations\.features: unknown layer name\(s\) \['stage9'\]",
        ),
        (
            {"similarity": {"batch_size": 32}},
            r"'similarity\.batch_size' moved to 'activations\.cka_batch_size'",
        ),
        ({"similarity": {"metrics": ["svcca"]}}, r"lacks 'minibatch_cka'"),
        (
            {"activations": {"inputs": ["benign", "fgsm"]}},
            r"activations\.inputs\[1\]: unknown 'fgsm'; valid: benign, pgd; transfer inputs",
        ),
        (
            {"transfer": {"directions": ["robust_to_standrd"]}},
            r"transfer\.directions\[0\]: unknown 'robust_to_standrd' \(did you mean "
            r"'robust_to_standard'\?\); valid: standard_to_robust, robust_to_standard",
        ),
        ({"probes": {"folds": 1}}, r"probes\.folds: 1 is no cross-validation"),
        (
            {"evaluation": {"autoattack": {"version": ["apgd-ce", "apgd_t"]}}},
            r"evaluation\.autoattack\.version\[1\]: unknown attack 'apgd_t' \(did you mean "
            r"'apgd-t'\?\); valid: apgd-ce, apgd-t",
        ),
        (
            {"evaluation": {"autoattack": {"version": "strongest"}}},
            r"evaluation\.autoattack\.version: unknown version 'strongest'; valid: standard, plus",
        ),
        (
            {"activations": {"features": "none"}, "similarity": {"metrics": ["minibatch_cka"]}},
            r"probes\.folds: linear probes read raw features, but activations\.features is none",
        ),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, change, pattern):
    wd = make_workdir(tmp_path, dict(TINY, **change))
    out = snakemake(wd, "-n", check=False)
    assert out.returncode != 0
    assert re.search(pattern, out.stdout + out.stderr, re.S), (out.stdout + out.stderr)[-3000:]
    assert not (wd / "results").exists()


def test_report_has_every_figure(completed_run):
    snakemake(completed_run, "--report", "results/report.zip")
    import zipfile

    with zipfile.ZipFile(completed_run / "results/report.zip") as report:
        names = report.namelist()
        index = next(n for n in names if n.endswith("report.html"))
        landing = report.read(index).decode()
    for figure in ("cross_layer_heatmaps", "block_score_vs_eps", "accuracy_vs_eps"):
        assert any(name.endswith(f"{figure}.png") for name in names), figure
    # The landing page is the study from the config; findings, accuracy and provenance are
    # pages of their own, the figures grouped by analysis (issue 25).
    for page in ("findings", "accuracy", "interactive", "provenance"):
        assert any(name.endswith(f"/{page}.html") for name in names), (page, names)
    assert "datasets: digits" in landing and "seeds: 0" in landing
    assert re.search(r"Figures (·|\\u00b7) cross_layer", landing) and "Findings" in landing


def test_the_interactive_page_holds_every_cell_and_loads_nothing(completed_run):
    """Every finite cell of every cross-layer and robust x standard comparison under every
    measure is a row of the charts' data; the page has no script or style from elsewhere."""
    from robrep.io.xrio import read_netcdf
    from robrep.study.interactive import matrix_rows

    ds = read_netcdf(completed_run / "results/summary/similarity.nc")
    for analysis in ("cross_layer", "robust_vs_standard"):
        rows = matrix_rows(ds, analysis)
        chosen = ds.analysis.values == analysis
        finite = int(np.isfinite(ds.similarity.values[:, chosen]).sum())
        assert len(rows) == finite > 0, analysis
        assert {r["measure"] for r in rows} == set(ds.measure.values.tolist())
    page = (completed_run / "results/report/interactive.html").read_text()
    assert page.count("vegaEmbed('#") == 3
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # the page, not the libraries
    assert markup.count("<script") == 0 and not re.search(r"<[a-z]+[^>]+(src|href)=", markup)


def test_dag_pairs_for_threat_models_seeds_and_width_depth(tmp_path):
    """A config with L2 and Linf models, two seeds and two WRN widths: the pairs of the
    remaining analyses, read off the planned DAG."""
    config = dict(
        TINY,
        architectures=["wrn-10-1", "wrn-10-2"],
        methods=[
            {"method": "pgd", "norm": "linf", "eps": 0.1, "steps": 1},
            {"method": "pgd", "norm": "l2", "eps": 0.5, "steps": 1},
        ],
        seeds=[0, 1],
        analyses=["threat_models", "seeds", "width_depth"],
    )
    workdir = make_workdir(tmp_path, config)
    jobs = {}
    for job in planned_jobs(snakemake(workdir, "-n").stdout):
        if job["rule"] == "similarity":
            analysis = re.search(r"analysis=(\w+)", job["wildcards"]).group(1)
            stores = tuple("/".join(path.split("/")[3:6]) for path in job["input"].split(", "))
            jobs.setdefault(analysis, set()).add(stores)
    linf, l2 = "pgd-linf-eps0.1", "pgd-l2-eps0.5"
    assert jobs["threat_models"] == {
        (f"{arch}/{linf}/seed{s}", f"{arch}/{l2}/seed{s}")
        for arch in ("wrn-10-1", "wrn-10-2")
        for s in (0, 1)
    }
    assert jobs["seeds"] == {
        (f"{arch}/{m}/seed0", f"{arch}/{m}/seed1")
        for arch in ("wrn-10-1", "wrn-10-2")
        for m in (linf, l2)
    }
    assert jobs["width_depth"] == {
        (f"wrn-10-1/{m}/seed{s}", f"wrn-10-2/{m}/seed{s}") for m in (linf, l2) for s in (0, 1)
    }


def two_dataset_summary(ds: xr.Dataset) -> xr.Dataset:
    """The tiny run's summary beside a copy relabelled as a second dataset (cifar10) whose CKA
    is halved: a two-dataset study's summary."""
    other = ds.copy(deep=True)
    other["dataset"] = ("comparison", np.full(ds.sizes["comparison"], "cifar10"))
    other["model_dataset"] = ("model", np.full(ds.sizes["model"], "cifar10"))
    other["similarity"] = other["similarity"] * 0.5
    by_comparison = [n for n in ds.variables if "comparison" in ds[n].dims]
    by_model = [n for n in ds.variables if "model" in ds[n].dims and n not in by_comparison]
    parts = [
        xr.concat([ds[by_comparison], other[by_comparison]], "comparison"),
        xr.concat([ds[by_model], other[by_model]], "model"),
    ]
    return xr.merge(parts, compat="override").assign_coords(
        comparison=np.arange(2 * ds.sizes["comparison"]), model=np.arange(2 * ds.sizes["model"])
    )


def test_figures_are_drawn_per_dataset_never_averaged(completed_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from robrep.study import figures

    summary = read_netcdf(completed_run / "results/summary/similarity.nc")
    ds = two_dataset_summary(summary)
    titles = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: (titles.append(fig.get_suptitle()), savefig(fig, *a, **k)),
    )
    for dataset, scale in (("digits", 1.0), ("cifar10", 0.5)):
        part = figures.for_dataset(ds, dataset)
        assert set(part.dataset.values) == {dataset} == set(part.model_dataset.values)
        np.testing.assert_allclose(part.similarity.values, summary.similarity.values * scale)
        titles.clear()
        figures.draw("cross_layer_heatmaps", ds, dataset, {"png": tmp_path / f"{dataset}.png"})
        figures.draw("accuracy_vs_eps", ds, dataset, {"png": tmp_path / f"{dataset}-acc.png"})
        assert len(titles) == 2 and all(t.startswith(f"{dataset}") for t in titles), titles
    digits, cifar = ((tmp_path / f"{d}.png").read_bytes() for d in ("digits", "cifar10"))
    assert digits != cifar  # the halved CKA shows: each figure draws its own dataset


def test_a_two_dataset_study_plans_figures_per_dataset(tmp_path):
    config = {**copy.deepcopy(TINY), "datasets": ["digits", "cifar10"]}
    config["architectures"] = {"digits": ["convnet"], "cifar10": ["convnet"]}
    jobs = planned_jobs(dry_run_with(make_workdir(tmp_path, TINY), config))
    (figure_job,) = [j for j in jobs if j["rule"] == "figures"]
    for dataset in ("digits", "cifar10"):
        assert f"results/figures/{dataset}/cross_layer_heatmaps.png" in figure_job["output"]


def test_diagonal_panels_are_titled_by_their_column(completed_run, tmp_path, monkeypatch):
    """Each column of the transfer figure says which inputs it draws (a method's name had taken
    the column's place in every title), and the figure's CSV has every line's points."""
    from robrep.study import figures

    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    ds = read_netcdf(completed_run / "results/summary/similarity.nc")
    paths = {"csv": tmp_path / "transfer.csv"}
    figures.draw("transfer_diagonal", ds, "digits", paths)
    (fig,) = kept
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "convnet\neach on its own adversarial examples",
        "convnet\nboth on the standard model's adversarial examples",
        "convnet\nboth on the robust model's adversarial examples",
    ]
    rows = paths["csv"].read_text().splitlines()
    drawn = sum(len(line.get_xdata()) for ax in fig.axes for line in ax.lines)
    assert sum(",value," in row for row in rows) == drawn > 0


def test_the_claims_figures_mark_the_findings_verdicts(completed_run, tmp_path, monkeypatch):
    """The deeper-layers figure's legend and the block-score figure's notes give each robust
    configuration the verdict findings.csv gives it."""
    import csv

    from robrep.study import figures

    findings = list(csv.DictReader((completed_run / "results/summary/findings.csv").open()))
    verdict = {
        r["claim"]: r["verdict"]
        for r in findings
        if r["measure"] == "minibatch_cka" and r["method_id"] == "pgd-linf-eps0.1"
    }
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    ds = read_netcdf(completed_run / "results/summary/similarity.nc")
    figures.draw("robust_vs_standard_diagonal", ds, "digits", {"png": tmp_path / "d.png"})
    figures.draw("block_score_vs_eps", ds, "digits", {"png": tmp_path / "b.png"})
    diagonal, block = kept
    legend = [t.get_text() for t in diagonal.axes[0].get_legend().get_texts()]
    assert f"PGD L∞ ε=0.1: {verdict['deeper_layers']}" in legend
    assert [t.get_text() for t in block.axes[0].texts] == [verdict["block_structure"]]
