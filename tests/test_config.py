"""Config semantics: eps parsing, method ids, and errors that name key, value and valid choices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from robrep.ids import SAFE_ID, method_id
from robrep.pipeline import config as rcfg

ROOT = Path(__file__).parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def check(cfg):
    rcfg.check_unknown_keys(cfg, SCHEMA)
    rcfg.check_config(cfg)


def test_default_paper_and_smoke_configs_pass():
    check(DEFAULT)
    check(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    check(yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text()))


def test_make_smoke_runs_the_smoke_config_in_a_tree_of_its_own():
    """`make smoke` must not write into results/: a run with other settings in the same
    directory would rerun the default study's outputs under the smoke settings."""
    import subprocess

    out = subprocess.run(
        ["make", "-n", "-W", ".venv/.installed", "smoke"], cwd=ROOT, capture_output=True, text=True
    )
    command = [line for line in out.stdout.splitlines() if "snakemake" in line]
    assert command and "--directory smoke --configfile config/smoke.yaml" in command[-1], out


@pytest.mark.parametrize(
    "value, expected", [(0.1, 0.1), ("8/255", 8 / 255), (" 1/2 ", 0.5), (0, 0.0), ("0.5", 0.5)]
)
def test_parse_eps(value, expected):
    assert rcfg.parse_eps(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [-0.1, "a/b", "1/0", True, None, float("inf"), "1e400"])
def test_parse_eps_rejects(value):
    with pytest.raises(rcfg.ConfigError, match="eps"):
        rcfg.parse_eps(value)


@pytest.mark.parametrize(
    "method, expected",
    [
        ({"method": "standard"}, "standard"),
        ({"method": "pgd", "norm": "linf", "eps": "8/255"}, "pgd-linf-eps8_255"),
        ({"method": "trades", "norm": "linf", "eps": 0.1}, "trades-linf-eps0.1"),
        ({"method": "pgd", "norm": "l2", "eps": 0.25}, "pgd-l2-eps0.25"),
        ({"method": "pgd", "norm": "l2", "eps": 1}, "pgd-l2-eps1"),
    ],
)
def test_method_id(method, expected):
    assert method_id(method) == expected
    assert SAFE_ID.match(expected)


def test_resolve_method_defaults():
    m = rcfg.resolve_method({"method": "trades", "norm": "linf", "eps": "8/255"})
    assert m["steps"] == 7 and m["step_size"] == pytest.approx(2.5 * (8 / 255) / 7)
    assert m["beta"] == 6.0


def mutate(path, value):
    cfg = copy.deepcopy(DEFAULT)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    "path, value, pattern",
    [
        (
            ["datasets"],
            ["mnist"],
            r"datasets\[0\]: unknown dataset 'mnist'.*valid: digits, cifar10",
        ),
        (
            ["architectures"],
            ["resnet50"],
            r"architectures\[0\]: unknown architecture 'resnet50'; valid: convnet",
        ),
        (
            ["architectures"],
            ["wrn-27-2"],
            r"architectures\[0\]: 'wrn-27-2': WRN depth must be 6n \+ 4",
        ),
        (  # a 300-digit width crashed inside torch (issue 28)
            ["architectures"],
            ["wrn-10-" + "9" * 300],
            r"architectures\[0\]: 'wrn-10-9+': WRN depth .* width in \[1, 64\]",
        ),
        (["architectures"], ["convnet-65"], r"convnet width must be in \[1, 64\]"),
        (
            ["methods"],
            [{"method": "pgd", "norm": "linf", "eps": -0.1}],
            r"methods\[0\]\.eps: -0\.1 must be a finite number >= 0",
        ),
        (
            ["methods"],
            [{"method": "standard", "eps": 0.1}],
            r"methods\[0\]\.eps: 0\.1 given for method 'standard'",
        ),
        (
            ["methods"],
            [{"method": "fgsm"}],
            r"methods\[0\]\.method: 'fgsm' is not one of standard, pgd, trades",
        ),
        (
            ["methods"],
            [{"method": "pgd", "norm": "l1", "eps": 1}],
            r"methods\[0\]\.norm: 'l1' is not one of linf, l2",
        ),
        (["methods"], [{"method": "pgd", "norm": "linf", "eps": 0}], r"use method 'standard'"),
        (["methods"], [{"method": "standard"}, {"method": "standard"}], r"repeats methods\[0\]"),
        (
            ["methods"],
            [{"method": "pgd", "norm": "linf", "eps": e} for e in (0.1, "1/10")],
            r"methods\[1\]: pgd linf eps '1/10' is methods\[0\] again \(eps 0\.1\)",
        ),
        (
            ["methods"],
            [{"method": "pgd", "norm": "linf", "eps": 1}],
            r"methods\[0\]\.eps: 1 is >= 1, the whole \[0, 1\] pixel range",
        ),
        (
            ["methods"],
            [{"method": "pgd", "norm": "linf", "eps": 0.1, "step_size": 100}],
            r"methods\[0\]\.step_size: 100 must lie in \(0, 1\]",
        ),
        (["evaluation", "eps"], 2, r"evaluation\.eps: 2 is >= 1"),
        (
            ["analyses"],
            [],
            r"analyses: empty, so nothing would be compared; choose from cross_layer",
        ),
        (
            ["training", "epoch"],
            3,
            r"unknown config key 'training\.epoch' \(did you mean 'epochs'\?\); valid keys under 'training': augment, batch_size",
        ),
        (["datsets"], ["digits"], r"unknown config key 'datsets' \(did you mean 'datasets'\?\)"),
        (["architectures"], ["../etc"], r"architectures\[0\]: '\.\./etc' cannot be used in a path"),
        (["datasets"], ["a/b"], r"datasets\[0\]: 'a/b' cannot be used in a path"),
        (["seeds"], [0, 0], r"seeds: \[0, 0\] repeats a seed"),
        (
            ["analyses"],
            ["cross_layers"],
            r"analyses\[0\]: unknown analysis 'cross_layers' \(did you mean 'cross_layer'\?\); "
            r"valid: cross_layer, robust_vs_standard",
        ),
        (
            ["seeds"],
            [10**20],
            r"seeds\[0\]: 100000000000000000000 must be an integer in \[0, 2\*\*32\)",
        ),
        (["evaluation"], {"eps": 0}, r"evaluation\.eps: 0 attacks with radius 0"),
        (["evaluation"], {"eps": "0/255"}, r"evaluation\.eps: '0/255' attacks with radius 0"),
        (
            ["activations"],
            {"inputs": ["pgd"]},
            r"activations\.inputs: \['pgd'\] lacks 'benign', which every analysis reads",
        ),
        (
            ["similarity"],
            {"metrics": ["minibatch_cka", "minibatch_rbf"]},
            r"similarity\.metrics\[1\]: unknown metric 'minibatch_rbf' \(did you mean "
            r"'minibatch_rbf_cka'\?\); valid: minibatch_cka, minibatch_rbf_cka, .*, procrustes$",
        ),
    ],
)
def test_bad_config_messages(path, value, pattern):
    with pytest.raises(rcfg.ConfigError, match=pattern):
        check(mutate(path, value))


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (
            {"methods": [{"method": "pgd", "norm": "linf", "eps": 0.1}]},
            r"'robust_vs_standard' compares each robust model x the standard",
        ),
        ({"seeds": [0]}, r"'seeds' compares the same configuration at different seeds"),
        (
            {"activations": {"inputs": ["benign"]}},
            r"'benign_vs_adversarial' compares each model on benign",
        ),
    ],
)
def test_analysis_without_pairs_is_refused(changes, pattern):
    cfg = copy.deepcopy(DEFAULT)
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    cfg["analyses"] = ["cross_layer", pattern.split("'")[1]]
    check(cfg)
    with pytest.raises(rcfg.ConfigError, match=pattern + r".*nothing to compare"):
        rcfg.check_analyses(cfg)


def test_activation_checkpoints_default_and_errors():
    cfg = copy.deepcopy(DEFAULT)
    cfg["training"] = {"epochs": 6, "checkpoint_every": 2}
    cfg["activations"] = {}
    assert rcfg.activation_checkpoints(cfg) == ["epoch2", "epoch4", "final", "best"]
    cfg["activations"] = {"checkpoints": [4, "final"]}
    assert rcfg.activation_checkpoints(cfg) == ["epoch4", "final"]
    cfg["activations"] = {"checkpoints": [3]}
    with pytest.raises(
        rcfg.ConfigError, match=r"epoch 3 is not saved by training.*saved epochs: \[2, 4, 6\]"
    ):
        rcfg.activation_checkpoints(cfg)


def validated(changes):
    """The default config with `changes` merged into its sections, defaults filled as Snakemake
    fills them from the schema."""
    from snakemake.utils import validate

    cfg = copy.deepcopy(DEFAULT)
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    validate(cfg, str(ROOT / "config" / "schema.yaml"))
    return cfg


def test_n_examples_above_the_test_split_is_clamped_with_a_warning():
    cfg = validated({"activations": {"n_examples": 10**9}})
    assert rcfg.examples_used(cfg) == {"digits": 359}
    (line,) = rcfg.clamp_warnings(cfg)
    assert "activations.n_examples: 1000000000" in line and "all 359" in line
    cfg = validated({"activations": {"n_examples": 300}})
    assert rcfg.examples_used(cfg) == {"digits": 300} and not rcfg.clamp_warnings(cfg)


@pytest.mark.parametrize("asked, attacked", [(200, 200), (100000, 359)])
def test_autoattack_subset_is_capped_by_the_test_split_not_the_stores(asked, attacked):
    """AutoAttack evaluates the model on a test subset: capped by the test split (359 digits),
    not by activations.n_examples (64 here), and a cap warns with both numbers (issue 28)."""
    cfg = validated(
        {"activations": {"n_examples": 64}, "evaluation": {"autoattack": {"n_examples": asked}}}
    )
    assert rcfg.autoattack_examples(cfg) == {"digits": attacked}
    warned = [w for w in rcfg.clamp_warnings(cfg) if w.startswith("evaluation.autoattack")]
    if asked > 359:
        assert warned == [
            "evaluation.autoattack.n_examples: 100000 is more than the 359 examples of the digits "
            "test split; AutoAttack attacks all 359"
        ]
    else:
        assert not warned


def test_a_test_split_too_small_is_refused_naming_the_dataset_options():
    """test_fraction 0.001 left 0 test examples and the refusal blamed a measure's setting
    (issue 28); now the dataset's options are named with the count."""
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    from snakemake.utils import validate

    cfg = copy.deepcopy(DEFAULT)
    cfg["dataset_options"] = {"digits": {"test_fraction": 0.001}}
    with pytest.raises(
        rcfg.ConfigError, match=r"dataset_options\.digits: .* leaves 0 test examples; .* at least 4"
    ):
        rcfg.load_config(cfg, schema, lambda c: validate(c, str(ROOT / "config" / "schema.yaml")))


def test_intervals_without_two_minibatches_a_pass_are_refused():
    """More passes reshuffle the same examples: one batch a pass over two passes is refused too
    (it gave two identical batches and a zero-width interval)."""
    few = {"n_examples": 64, "cka_batch_size": 100, "passes": 1}
    for passes in (1, 2):
        cfg = validated({"activations": {**few, "passes": passes}, "similarity": {}})
        with pytest.raises(
            rcfg.ConfigError,
            match=r"similarity.intervals: .* digits's passes have 1 \(64 examples.*"
            r"cka_batch_size <= 32 or intervals: false",
        ):
            rcfg.check_minibatches(cfg)
    rcfg.check_minibatches(validated({"activations": few, "similarity": {"intervals": False}}))


def external(tmp_path, **changes):
    checkpoint = tmp_path / "w.pt"
    checkpoint.write_bytes(b"")
    entry = {
        "name": "theirs",
        "dataset": "digits",
        "arch": "convnet",
        "checkpoint": str(checkpoint),
        "method": {"method": "pgd", "norm": "linf", "eps": "8/255"},
    }
    entry.update(changes)
    return entry


def test_external_models_are_checked_and_keyed(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["external_models"] = [external(tmp_path), external(tmp_path, name="other", seed=5)]
    check(cfg)
    models = rcfg.external_models(cfg)
    assert [m.id for m in models] == [
        "digits/convnet/pgd-linf-eps8_255/seed0",
        "digits/convnet/pgd-linf-eps8_255/seed5",
    ]
    first = next(iter(models.values()))
    assert first["method"]["eps"] == pytest.approx(8 / 255) and first["strip_prefix"] == "module."
    # External models only: no architectures, methods or seeds.
    only = {"datasets": ["digits"], "external_models": [external(tmp_path)]}
    check(only)
    study = rcfg.study_from_config(
        {
            **only,
            "training": {"epochs": 2, "checkpoint_every": 1},
            "activations": {"inputs": ["benign", "pgd"]},
        }
    )
    assert [m.id for m in study.models] == ["digits/convnet/pgd-linf-eps8_255/seed0"]
    assert study.external == frozenset(study.models)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"name": "a b"}, r"external_models\[0\]\.name: 'a b' cannot be used in a path"),
        ({"arch": "resnet9"}, r"external_models\[0\]\.arch: unknown architecture 'resnet9'"),
        ({"method": {"method": "standard", "eps": 0.1}}, r"standard takes no \['eps'\]"),
        (
            {"input_size": 32},
            r"input_size: the weights expect 32 px images, but digits is prepared at 16 px; set "
            r"dataset_options\.digits\.image_size: 32",
        ),
        (
            {"method": {"method": "pgd", "norm": "linf", "eps": 0}},
            r"method\.eps: 0 is method 'standard'",
        ),
        (
            {"method": {"method": "pgd", "norm": "linf", "eps": 2}},
            r"external_models\[0\]\.method\.eps: 2 is >= 1, the whole \[0, 1\] pixel range",
        ),
        # the default config trains convnet/standard/seed0 itself
        (
            {"method": {"method": "standard"}},
            r"its model id digits/convnet/standard/seed0 is also trained",
        ),
    ],
)
def test_bad_external_models(tmp_path, changes, pattern):
    cfg = copy.deepcopy(DEFAULT)
    cfg["external_models"] = [external(tmp_path, **changes)]
    with pytest.raises(rcfg.ConfigError, match=pattern):
        check(cfg)


def test_no_models_and_half_given_grids_are_refused(tmp_path):
    with pytest.raises(rcfg.ConfigError, match="no models: give architectures, methods and seeds"):
        check({"datasets": ["digits"]})
    with pytest.raises(
        rcfg.ConfigError, match="methods, seeds: empty, so no model would be trained"
    ):
        check({"datasets": ["digits"], "architectures": ["convnet"]})
    twice = {"datasets": ["digits"], "external_models": [external(tmp_path)] * 2}
    with pytest.raises(rcfg.ConfigError, match=r"name: 'theirs' repeats external_models\[0\]"):
        check(twice)


def test_evaluation_per_dataset():
    """`evaluation.datasets.<d>` changes the attack of that dataset only; a dataset not in the
    run, or an L∞ budget of 1 or more there, is refused naming the key."""
    config = {
        "datasets": ["digits", "cifar10"],
        "evaluation": {
            "norm": "linf",
            "eps": "8/255",
            "steps": 20,
            "val_steps": 5,
            "step_size": 2 / 255,
            "batch_size": 256,
            "autoattack": {},
            "datasets": {"digits": {"eps": 0.1, "steps": 10}},
        },
    }
    digits = rcfg.evaluation_attack(config, "digits")
    cifar = rcfg.evaluation_attack(config, "cifar10")
    assert digits == {"norm": "linf", "eps": 0.1, "steps": 10, "val_steps": 5, "step_size": 2 / 255}
    assert cifar == {
        "norm": "linf",
        "eps": 8 / 255,
        "steps": 20,
        "val_steps": 5,
        "step_size": 2 / 255,
    }
    config["evaluation"]["datasets"] = {"mnist": {"eps": 0.3}}
    with pytest.raises(
        rcfg.ConfigError, match="evaluation.datasets: mnist not in datasets; valid: digits, cifar10"
    ):
        rcfg.check_evaluation_datasets(config)
    config["evaluation"]["datasets"] = {"digits": {"eps": 1.5}}
    with pytest.raises(rcfg.ConfigError, match=r"evaluation\.datasets\.digits\.eps: 1.5 is >= 1"):
        rcfg.check_evaluation_datasets(config)


@pytest.mark.parametrize("key", ["datasets", "seeds", "architectures", "methods"])
def test_a_string_where_a_list_belongs_is_refused_naming_the_key(key):
    """`datasets: digits` is refused as one value, not read letter by letter."""
    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    with pytest.raises(rcfg.ConfigError, match=rf"^{key}: 'digits' is one value, not a list"):
        rcfg.check_unknown_keys({key: "digits"}, schema)


def test_whole_number_floats_become_integers():
    """`passes: 2.0`, `cka_batch_size: 32.0`, `checkpoints: [1.0]` (JSON Schema integers) are
    ints after loading, so no job meets a float where it slices or counts."""
    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    config = {
        "activations": {"passes": 2.0, "cka_batch_size": 32.0, "checkpoints": [1.0, "final"]},
        "training": {"epochs": 2.0, "lr": 1.0},
    }
    rcfg.whole_numbers_as_int(config, schema)
    act = config["activations"]
    assert act["passes"] == 2 and type(act["passes"]) is int
    assert type(act["cka_batch_size"]) is int and act["checkpoints"] == [1, "final"]
    assert type(act["checkpoints"][0]) is int and type(config["training"]["epochs"]) is int
    assert type(config["training"]["lr"]) is float  # a number stays a number


def test_transfer_directions_without_adversarial_inputs_are_refused():
    """Asked for explicitly, transfer directions without pgd inputs made no comparison and said
    nothing (issue 28); the defaults (no transfer key) stay quiet."""
    cfg = mutate(["activations"], {"inputs": ["benign"]})
    check(cfg)
    cfg["transfer"] = {"directions": ["standard_to_robust"]}
    with pytest.raises(
        rcfg.ConfigError,
        match=r"transfer\.directions: \['standard_to_robust'\] transfer .* lacks 'pgd'",
    ):
        check(cfg)


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, capsys):
    """PyYAML (and so Snakemake) keeps the last of two equal keys silently (issue 28)."""
    from robrep.pipeline import cli

    path = tmp_path / "dup.yaml"
    path.write_text("activations:\n  passes: 3\n  n_examples: 64\n  passes: 1\n")
    with pytest.raises(rcfg.ConfigError, match=r"line 4 gives 'passes' again \(first at line 2\)"):
        rcfg.read_config_file(path)
    assert cli.main(["plan", "--configfile", str(path)]) == 2
    assert "gives 'passes' again" in capsys.readouterr().err
    path.write_text("activations:\n  passes: 3\nsimilarity:\n  passes: 1\n")  # other mappings
    assert rcfg.read_config_file(path)["activations"] == {"passes": 3}
