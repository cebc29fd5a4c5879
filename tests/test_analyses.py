"""Scalar summaries on synthetic matrices, and figures from a small synthetic summary Dataset."""

from __future__ import annotations

import numpy as np
import pytest

from robrep.study.scores import block_structure_score, depth_below, diagonal


def block_matrix(sizes, within=0.9, across=0.3):
    n = sum(sizes)
    m = np.full((n, n), across)
    start = 0
    for s in sizes:
        m[start : start + s, start : start + s] = within
        start += s
    np.fill_diagonal(m, 1.0)
    return m


def test_block_score_ranks_block_above_uniform():
    uniform = np.full((8, 8), 0.6)
    np.fill_diagonal(uniform, 1.0)
    block = block_matrix([3, 5])
    assert block_structure_score(uniform) == pytest.approx(0.0, abs=1e-12)
    assert block_structure_score(block) == pytest.approx(0.6)
    weak = block_matrix([3, 5], within=0.7, across=0.5)
    assert (
        block_structure_score(block) > block_structure_score(weak) > block_structure_score(uniform)
    )


@pytest.mark.parametrize("n, min_size", [(3, 2), (7, 2), (12, 3)])
def test_block_score_is_its_definition(rng, n, min_size):
    from helpers.reference import block_score_loops

    c = rng.random((n, n))
    c = (c + c.T) / 2
    assert block_structure_score(c, min_size) == pytest.approx(block_score_loops(c, min_size))


def test_block_score_of_a_nan_matrix_is_nan_not_inf():
    block = block_matrix([3, 5])
    block[0, :] = block[:, 0] = np.nan  # a constant first layer
    assert np.isnan(block_structure_score(block))


def test_block_score_smooth_decay_is_between():
    idx = np.arange(8)
    toeplitz = 0.9 ** np.abs(idx[:, None] - idx[None, :])
    assert (
        0 < block_structure_score(toeplitz) < block_structure_score(block_matrix([4, 4], 0.95, 0.3))
    )


def test_block_score_needs_square():
    with pytest.raises(ValueError, match="square"):
        block_structure_score(np.ones((3, 4)))


def test_depth_below_and_diagonal():
    assert depth_below(np.array([1.0, 0.95, 0.8, 0.5])) == pytest.approx(2 / 3)
    assert np.isnan(depth_below(np.array([1.0, 0.99])))
    np.testing.assert_array_equal(diagonal(np.arange(6).reshape(2, 3)), [0, 4])


# ----------------------------------------------------------------------------------------------
# The registry: pairs from a config, without Snakemake.


def study(**changes):
    import copy

    from robrep.pipeline.config import study_from_config

    from helpers.workflow import TINY

    config = copy.deepcopy(TINY)
    config.update(changes)
    config.setdefault("activations", {}).setdefault("inputs", ["benign", "pgd"])
    config["training"].setdefault("checkpoint_every", 1)
    return study_from_config(config)


def pairs_of(s, analysis):
    from robrep.study.analyses import comparisons

    return [
        (a.id.removeprefix("digits/"), b.id.removeprefix("digits/"))
        for (name, _, _), (a, b) in comparisons(s, [analysis]).items()
        if name == analysis
    ]


def test_pairs_of_the_tiny_config():
    s = study()
    pgd, std = "convnet/pgd-linf-eps0.1/seed0", "convnet/standard/seed0"
    assert pairs_of(s, "cross_layer") == [
        (f"{std}/final/benign",) * 2,
        (f"{std}/final/pgd",) * 2,
        (f"{pgd}/final/benign",) * 2,
        (f"{pgd}/final/pgd",) * 2,
    ]
    assert pairs_of(s, "robust_vs_standard") == [
        (f"{pgd}/final/benign", f"{std}/final/benign"),
        (f"{pgd}/final/pgd", f"{std}/final/pgd"),
    ]
    # Both directions: the robust model and the standard one on the standard model's adversarial
    # examples, then both on the robust model's; the robust model is side a (its summaries).
    assert pairs_of(s, "transfer") == [
        (f"{pgd}/final/transfer-standard", f"{std}/final/pgd"),
        (f"{pgd}/final/pgd", f"{std}/final/transfer-pgd-linf-eps0.1"),
    ]
    assert pairs_of(s, "benign_vs_adversarial") == [
        *[(f"{m}/final/benign", f"{m}/final/pgd") for m in (std, pgd)],
        (f"{pgd}/final/benign", f"{pgd}/final/transfer-standard"),
        (f"{std}/final/benign", f"{std}/final/transfer-pgd-linf-eps0.1"),
    ]
    assert pairs_of(s, "epochs") == [
        (f"{m}/{ck}/benign", f"{m}/final/benign") for m in (std, pgd) for ck in ("epoch1", "best")
    ]
    for analysis in ("threat_models", "seeds", "width_depth"):
        assert pairs_of(s, analysis) == []


def test_transfer_pairs_follow_the_directions_and_need_adversarial_inputs():
    one = study(transfer={"directions": ["robust_to_standard"]})
    pgd, std = "convnet/pgd-linf-eps0.1/seed0", "convnet/standard/seed0"
    assert pairs_of(one, "transfer") == [
        (f"{pgd}/final/pgd", f"{std}/final/transfer-pgd-linf-eps0.1")
    ]
    assert pairs_of(one, "benign_vs_adversarial")[-1] == (
        f"{std}/final/benign",
        f"{std}/final/transfer-pgd-linf-eps0.1",
    )
    assert pairs_of(study(transfer={"directions": []}), "transfer") == []
    benign_only = study(activations={"inputs": ["benign"]})
    for analysis in ("transfer", "benign_vs_adversarial"):
        assert pairs_of(benign_only, analysis) == []
    assert pairs_of(benign_only, "robust_vs_standard") == [
        (f"{pgd}/final/benign", f"{std}/final/benign")
    ]
    # Without a standard model there is nothing to transfer from or to.
    robust_only = study(methods=[{"method": "pgd", "norm": "linf", "eps": 0.1}])
    assert pairs_of(robust_only, "transfer") == []
    # Two robust methods, two seeds: each robust model with the standard model of its seed.
    s = study(
        methods=[
            {"method": "standard"},
            {"method": "pgd", "norm": "linf", "eps": 0.1},
            {"method": "trades", "norm": "linf", "eps": 0.1},
        ],
        seeds=[0, 1],
    )
    got = pairs_of(s, "transfer")
    assert len(got) == 8  # 2 robust methods x 2 seeds x 2 directions
    for a, b in got:
        assert a.split("/")[2] == b.split("/")[2]  # same seed
        assert b.split("/")[1] == "standard" and a.split("/")[1] != "standard"


def test_transfer_inputs_round_trip():
    from robrep.ids import ModelKey, adversarial_source, transfer_inputs

    target = ModelKey("digits", "convnet", "pgd-linf-eps8_255", 0)
    for source in (
        target.with_(method_id="standard"),
        target.with_(method_id="trades-linf-eps0.1"),
        target.with_(arch="wrn-10-1", seed=3, method_id="pgd-l2-eps0.5"),
    ):
        inputs = transfer_inputs(source, target)
        assert adversarial_source(inputs, target) == source
        assert "/" not in inputs
    assert transfer_inputs(target.with_(method_id="standard"), target) == "transfer-standard"
    assert adversarial_source("pgd", target) == target
    assert adversarial_source("benign", target) is None
    with pytest.raises(ValueError, match="input kind 'adv' is not one of benign, pgd"):
        adversarial_source("adv", target)
    with pytest.raises(ValueError, match="another dataset"):
        transfer_inputs(target.with_(dataset="cifar10"), target)


def test_pairs_of_threat_models_seeds_and_width_depth():
    linf, l2 = "pgd-linf-eps0.1", "pgd-l2-eps0.5"
    s = study(
        architectures=["wrn-10-1", "convnet", "wrn-10-2"],
        methods=[
            {"method": "pgd", "norm": "linf", "eps": 0.1},
            {"method": "pgd", "norm": "l2", "eps": 0.5},
            {"method": "trades", "norm": "l2", "eps": 0.5},
        ],
        seeds=[0, 1],
    )
    assert set(pairs_of(s, "threat_models")) == {
        (f"{arch}/{linf}/seed{seed}/final/benign", f"{arch}/{l2}/seed{seed}/final/benign")
        for arch in ("wrn-10-1", "convnet", "wrn-10-2")
        for seed in (0, 1)
    }
    assert len(pairs_of(s, "seeds")) == 9 and all(
        a.replace("seed0", "seed1") == b for a, b in pairs_of(s, "seeds")
    )
    assert set(pairs_of(s, "width_depth")) == {
        (f"wrn-10-1/{m}/seed{seed}/final/benign", f"wrn-10-2/{m}/seed{seed}/final/benign")
        for m in (linf, l2, "trades-l2-eps0.5")
        for seed in (0, 1)
    }
    # No standard model: nothing to compare robust models with; no pgd inputs: no adversarial pairs.
    assert pairs_of(s, "robust_vs_standard") == []
    no_pgd = study(activations={"n_examples": 64, "inputs": ["benign"]})
    assert pairs_of(no_pgd, "benign_vs_adversarial") == []
    assert all(a.endswith("benign") for a, _ in pairs_of(no_pgd, "cross_layer"))


def test_registry_is_consistent():
    """Every analysis's figures are drawn by a function and have a caption; summary variables
    are unique; the config check knows exactly the registry's names."""
    from pathlib import Path

    from robrep.pipeline import config as rcfg
    from robrep.study.analyses import ANALYSES, STUDY_FIGURES, figures
    from robrep.study.figures import FIGURES

    names = figures(ANALYSES, probes=True)
    assert set(names) == set(FIGURES) and len(names) == len(set(names))
    assert names[-len(STUDY_FIGURES) :] == list(STUDY_FIGURES)
    root = Path(__file__).parents[1]
    for name in names:
        assert (root / "report" / f"{name}.rst").is_file(), name
    variables = [v for a in ANALYSES.values() for v in a.summaries]
    assert len(variables) == len(set(variables))
    assert figures(["seeds"]) == ["seeds_diagonal", *STUDY_FIGURES]
    with pytest.raises(rcfg.ConfigError, match="unknown analysis 'blocks'.*valid: cross_layer"):
        rcfg.check_config({"analyses": ["blocks"]})


def test_each_analysis_summarises_its_comparisons():
    from robrep.study.analyses import ANALYSES

    m = block_matrix([3, 5])
    benign = {"checkpoint": "final", "inputs": "benign"}
    assert ANALYSES["cross_layer"].summarise(m, benign) == {"block_score": pytest.approx(0.6)}
    assert set(ANALYSES["cross_layer"].summarise(m, dict(benign, inputs="pgd"))) == {
        "block_score_pgd"
    }
    assert ANALYSES["epochs"].summarise(m, benign) == {}
    drop = ANALYSES["epochs"].summarise(m, dict(benign, checkpoint="best"))["best_final_drop"]
    np.testing.assert_array_equal(drop, np.zeros(8))
    assert ANALYSES["seeds"].summarise(m, benign) == {"seed_mean_diag": 1.0}
    for analysis in ANALYSES.values():
        got = analysis.summarise(m, dict(benign, checkpoint="best"))
        assert set(got) <= set(analysis.summaries), analysis.name


def test_depth_matched_diagonal():
    from robrep.study.scores import depth_matched_diagonal

    m = np.arange(12.0).reshape(3, 4)
    # Layers at relative depth 0, 0.5, 1 of a 3-layer net meet layers 0, 2 (1.5 rounds to 2), 3.
    np.testing.assert_array_equal(depth_matched_diagonal(m), [0.0, 6.0, 11.0])
    square = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(depth_matched_diagonal(square), diagonal(square))


def test_ids_round_trip():
    from robrep.ids import ModelKey, StoreKey, comparison_id

    key = ModelKey("cifar10", "wrn-28-4", "pgd-linf-eps8_255", 2)
    assert key.id == "cifar10/wrn-28-4/pgd-linf-eps8_255/seed2"
    assert ModelKey.parse(key.id) == key
    assert key.dir("results") == "results/models/cifar10/wrn-28-4/pgd-linf-eps8_255/seed2"
    store = StoreKey(key, "best", "pgd")
    assert store.path("r") == "r/activations/cifar10/wrn-28-4/pgd-linf-eps8_255/seed2/best/pgd.zarr"
    assert comparison_id(store, StoreKey(key)) == (
        "wrn-28-4.pgd-linf-eps8_255.seed2.best.pgd__wrn-28-4.pgd-linf-eps8_255.seed2.final.benign"
    )
    for bad in ("cifar10/wrn/standard", "a/b/c/seedx", "a/b/c/d"):
        with pytest.raises(ValueError, match="not a model id"):
            ModelKey.parse(bad)


def test_adding_an_analysis_is_one_registry_entry(monkeypatch):
    """The README's worked example: one entry (plus a figure function) and the config check,
    the pairs, the summaries and the figure list all know the new analysis."""
    from robrep.pipeline import config as rcfg
    from robrep.study import analyses, figures
    from robrep.study.analyses import Analysis, StoreKey, _mean_diagonal, comparisons
    from robrep.study.variables import Variable

    def eps_neighbours_pairs(study):
        for m in study.models:
            method = study.methods[m.method_id]
            larger = sorted(
                (other["eps"], other_id)
                for other_id, other in study.methods.items()
                if other["method"] == method["method"]
                and other["norm"] == method["norm"]
                and other["eps"] > method["eps"]
            )
            if method["method"] != "standard" and larger:
                yield StoreKey(m), StoreKey(m.with_(method_id=larger[0][1]))

    entry = Analysis(
        "eps_neighbours",
        "each robust model x the next larger eps of its method and norm",
        eps_neighbours_pairs,
        _mean_diagonal("eps_neighbour_mean_diag"),
        {
            "eps_neighbour_mean_diag": Variable(
                "next larger eps, same-layer CKA",
                "mean over layers of CKA(layer, same layer at the next larger eps)",
                "robrep.study.analyses._mean_diagonal",
            )
        },
        ("eps_neighbours_diagonal",),
    )
    monkeypatch.setitem(analyses.ANALYSES, "eps_neighbours", entry)
    monkeypatch.setitem(figures.FIGURES, "eps_neighbours_diagonal", lambda ds, path: None)
    rcfg.check_config({"analyses": ["eps_neighbours"]})
    s = study(
        methods=[
            {"method": "standard"},
            {"method": "pgd", "norm": "linf", "eps": "8/255"},
            {"method": "pgd", "norm": "linf", "eps": "4/255"},
            {"method": "pgd", "norm": "l2", "eps": 0.5},
        ]
    )
    pairs = comparisons(s, ["eps_neighbours"])
    assert [(a.model.method_id, b.model.method_id) for a, b in pairs.values()] == [
        ("pgd-linf-eps4_255", "pgd-linf-eps8_255")
    ]
    assert analyses.figures(["eps_neighbours"]) == ["eps_neighbours_diagonal", "accuracy_vs_eps"]
    assert entry.summarise(np.eye(3), {}) == {"eps_neighbour_mean_diag": 1.0}


def test_comparison_of_stores_without_coordinates_is_refused(tiny_model, tmp_path):
    """A store lacking the metadata comparisons read (an older robrep's) is an error naming it."""
    from robrep.store.extract import extract_to_store
    from robrep.store.format import StoreLayout
    from robrep.study.compare import compare_stores

    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    path = extract_to_store(
        tiny_model,
        x,
        np.zeros(20, int),
        np.arange(20),
        tmp_path / "old.zarr",
        tiny_model.probe_layers("blocks"),
        {"model_id": "m", "dataset": "digits"},
        StoreLayout(chunk_rows=10),
        progress=False,
    )
    with pytest.raises(
        ValueError, match=r"old\.zarr lacks the metadata \['arch'.*forcerun extract"
    ):
        compare_stores(path, path, ["minibatch_cka"])


def test_every_summary_variable_names_a_function_that_exists():
    """The `computed_by` of every declared variable is a real robrep function."""
    import importlib

    from robrep.study.analyses import ANALYSES
    from robrep.study.summary import STUDY_VARIABLES

    declared = dict(STUDY_VARIABLES)
    for analysis in ANALYSES.values():
        assert not set(analysis.summaries) & set(STUDY_VARIABLES), analysis.name
        declared.update(analysis.summaries)
    for name, variable in declared.items():
        module, _, function = variable.computed_by.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert variable.long_name and variable.description, name


def test_an_undeclared_summary_variable_is_refused():
    import xarray as xr

    from robrep.study.summary import describe

    with pytest.raises(ValueError, match=r"\['mystery'\] are declared nowhere"):
        describe(xr.Dataset({"mystery": ("x", [1.0])}))
    described = describe(xr.Dataset({"clean_acc": ("model", [0.9])}))
    assert described.clean_acc.attrs["computed_by"] == "robrep.study.summary.model_summaries"
