"""Configuration semantics the JSON schema cannot express: eps parsing, methods, cross-key checks.

`config/schema.yaml` validates types and fills defaults; this module adds the checks that need
code (the dataset, model and analysis registries, eps given for `standard`, duplicate ids) and
resolves methods. Every error names the key, the bad value and the valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robrep.ids import (
    BENIGN,
    OWN_ADVERSARIAL,
    SAFE_ID,
    TRANSFER,
    ModelKey,
    method_id,
    saved_epochs,
)
from robrep.learn.attacks import DEFAULT_STEPS, default_step_size
from robrep.similarity.full import FULL_METRICS
from robrep.similarity.measures import GRAM_MEASURES
from robrep.similarity.result import MINIBATCH_CKA

if TYPE_CHECKING:
    from robrep.study.study import Study

METHODS = ("standard", "pgd", "trades")
NORMS = ("linf", "l2")
DEFAULT_TRADES_BETA = 6.0
# Settings of how and where jobs run, not of what they compute: no output depends on them.
EXECUTION_KEYS = ("device", "threads", "resources")
# Keys that moved, and where to: named in the unknown-key error.
MOVED_KEYS = {"similarity.batch_size": "activations.cka_batch_size"}
FEATURE_METRICS_NOTE = "needs raw features"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names key, value and valid choices."""


def parse_eps(value: Any, key: str = "eps") -> float:
    """Parse an epsilon given as a number or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a number; give e.g. 0.1 or '8/255'")
    if isinstance(value, int | float):
        eps = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            eps = float(Fraction(text))
        except OverflowError:
            raise ConfigError(f"{key}: {value!r} must be a finite number >= 0") from None
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{key}: {value!r} is not a number or fraction; give e.g. 0.1 or '8/255'"
            ) from None
    else:
        raise ConfigError(f"{key}: {value!r} is not a number; give e.g. 0.1 or '8/255'")
    if not eps >= 0 or eps == float("inf"):
        raise ConfigError(f"{key}: {value!r} must be a finite number >= 0")
    return eps


def resolve_method(method: Mapping[str, Any]) -> dict[str, Any]:
    """A method mapping with eps parsed to float and attack defaults filled in."""
    out = dict(method)
    out["id"] = method_id(method)
    if method["method"] == "standard":
        out.update(norm=None, eps=0.0, steps=0, step_size=0.0)
        return out
    eps = parse_eps(method["eps"], f"methods[{out['id']}].eps")
    steps = int(method.get("steps") or DEFAULT_STEPS)
    step_size = method.get("step_size")
    out.update(
        eps=eps,
        eps_text=str(method["eps"]),
        steps=steps,
        step_size=float(step_size) if step_size is not None else default_step_size(eps, steps),
    )
    if method["method"] == "trades":
        out["beta"] = float(method.get("beta", DEFAULT_TRADES_BETA))
    return out


def suggest(value: str, choices: list[str]) -> str:
    """' (did you mean X?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(value, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_config_file(path: str | Path) -> Any:
    """A YAML config file's content, refusing a key given twice in one mapping (PyYAML, and so
    Snakemake, keep the last silently: `passes: 3` then `passes: 1` runs 1 pass)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        f"{path}: line {line} gives {key!r} again (first at line {seen[key]}); "
                        f"YAML would keep the last one silently: keep one"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep)

    return yaml.load(Path(path).read_text(), Loader=UniqueKeys)


def check_config_files(paths: Sequence[str | Path]) -> None:
    """Refuse a config file with a repeated key (`read_config_file`); Snakemake has already read
    them, this re-reads them strictly."""
    for path in paths:
        read_config_file(path)


def check_unknown_keys(
    config: Mapping[str, Any], schema: Mapping[str, Any], path: str = ""
) -> None:
    """Raise on keys the schema does not declare, naming the key and the valid ones, and on a
    single string where the schema wants a list (`datasets: digits`, which the checks after
    this walk would otherwise read letter by letter).

    jsonschema's own message for ``additionalProperties`` lists neither the valid keys nor a
    suggestion; this walk gives both before the schema validation runs.
    """
    if isinstance(config, str) and _wants_list(schema):
        raise ConfigError(f"{path}: {config!r} is one value, not a list; write [{config}]")
    if not isinstance(config, Mapping) or schema.get("type") != "object":
        if isinstance(config, list) and "items" in schema:
            for i, item in enumerate(config):
                check_unknown_keys(item, schema["items"], f"{path}[{i}]")
        return
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        if key in props:
            check_unknown_keys(value, props[key], where)
        elif isinstance(extra, Mapping):
            check_unknown_keys(value, extra, where)
        elif where in MOVED_KEYS:
            raise ConfigError(
                f"config key {where!r} moved to {MOVED_KEYS[where]!r} (the minibatches of "
                f"minibatch CKA are made at extraction, with the Gram statistics)"
            )
        elif extra is False:
            valid = sorted(props)
            raise ConfigError(
                f"unknown config key {where!r}{suggest(key, valid)}; valid keys"
                f"{' under ' + repr(path) if path else ''}: {', '.join(valid)}"
            )


def whole_numbers_as_int(value: Any, schema: Mapping[str, Any]) -> Any:
    """`value` with every whole-number float where the schema wants an integer made an int
    (`passes: 2.0` is 2): JSON Schema counts 2.0 as an integer, Python's range() and slices do
    not. Mappings and lists are converted in place and returned."""
    kinds = _schema_types(schema)
    if isinstance(value, float) and value.is_integer() and "integer" in kinds:
        if "number" not in kinds:
            return int(value)
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                value[key] = whole_numbers_as_int(item, sub)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            value[:] = [whole_numbers_as_int(item, items) for item in value]
    return value


def _schema_types(schema: Mapping[str, Any]) -> set[str]:
    """The JSON types a schema node accepts: its `type` and its `oneOf` alternatives' types."""
    kinds = {schema.get("type")} | {alt.get("type") for alt in schema.get("oneOf", [])}
    return kinds - {None}


def _wants_list(schema: Mapping[str, Any]) -> bool:
    """The schema node takes a list (or a mapping) and never a string."""
    kinds = _schema_types(schema)
    return "array" in kinds and not {"string", "number", "integer"} & kinds


def check_safe_name(value: Any, key: str) -> str:
    """Names that become path components must match ``[A-Za-z0-9._-]+`` and not be ``.``/``..``."""
    text = str(value)
    if not SAFE_ID.match(text) or text in {".", ".."}:
        raise ConfigError(
            f"{key}: {text!r} cannot be used in a path; use letters, digits, '.', '_' or '-'"
        )
    return text


def check_config(config: Mapping[str, Any]) -> None:
    """Cross-key checks that need code; raises ConfigError naming key, value and choices.

    Runs before the schema validation, so it tolerates missing keys (the schema reports those).
    Datasets, architectures, analyses and similarity metrics are checked against their
    registries.
    """
    from robrep.learn.architectures import check_architecture as architecture_ok
    from robrep.learn.data import DATASETS as datasets
    from robrep.study.analyses import ANALYSES

    for i, name in enumerate(config.get("analyses") or []):
        if name not in ANALYSES:
            raise ConfigError(
                f"analyses[{i}]: unknown analysis {name!r}{suggest(str(name), list(ANALYSES))}; "
                f"valid: {', '.join(ANALYSES)}"
            )
    similarity = config.get("similarity")
    metrics = [*GRAM_MEASURES, *FULL_METRICS]
    for i, name in enumerate(
        similarity.get("metrics") or [] if isinstance(similarity, Mapping) else []
    ):
        if name not in metrics:
            raise ConfigError(
                f"similarity.metrics[{i}]: unknown metric {name!r}{suggest(str(name), metrics)}; "
                f"valid: {', '.join(metrics)}"
            )
    datasets = list(datasets)
    for i, name in enumerate(config.get("datasets") or []):
        check_safe_name(name, f"datasets[{i}]")
        if name not in datasets:
            raise ConfigError(
                f"datasets[{i}]: unknown dataset {name!r}{suggest(name, datasets)}; "
                f"valid: {', '.join(datasets)}"
            )
    archs = config.get("architectures") or []
    if isinstance(archs, Mapping):
        for name in archs:
            if name not in (config.get("datasets") or []):
                raise ConfigError(
                    f"architectures: {name!r} is not one of the config's datasets; "
                    f"datasets: {', '.join(config.get('datasets') or [])}"
                )
    lists = archs.items() if isinstance(archs, Mapping) else [("", archs)]
    for dataset, names in lists:
        for i, arch in enumerate(names or []):
            where = f"architectures.{dataset}[{i}]" if dataset else f"architectures[{i}]"
            check_safe_name(arch, where)
            try:
                architecture_ok(arch)
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from None
    seen: dict[str, int] = {}
    parsed: dict[tuple, int] = {}
    for i, method in enumerate(config.get("methods") or []):
        key = f"methods[{i}]"
        if not isinstance(method, Mapping):
            raise ConfigError(f"{key}: {method!r} must be a mapping such as {{method: pgd, ...}}")
        kind = method.get("method")
        if kind not in METHODS:
            raise ConfigError(f"{key}.method: {kind!r} is not one of {', '.join(METHODS)}")
        if kind == "standard":
            for field in ("eps", "norm", "steps", "step_size", "beta"):
                if field in method:
                    raise ConfigError(
                        f"{key}.{field}: {method[field]!r} given for method 'standard', which "
                        f"trains without an attack; remove it or use method pgd or trades"
                    )
        else:
            if method.get("norm") not in NORMS:
                raise ConfigError(
                    f"{key}.norm: {method.get('norm')!r} is not one of {', '.join(NORMS)}"
                )
            if "eps" not in method:
                raise ConfigError(f"{key}.eps: missing; method {kind!r} needs an eps > 0")
            eps = parse_eps(method["eps"], f"{key}.eps")
            if eps == 0:
                raise ConfigError(
                    f"{key}.eps: 0 makes {kind!r} standard training; use method 'standard'"
                )
            check_linf_budget(method, key)
            if "beta" in method and kind != "trades":
                raise ConfigError(f"{key}.beta: only method 'trades' takes beta")
        mid = method_id(method)
        check_safe_name(mid, f"{key} (id)")
        if mid in seen:
            raise ConfigError(
                f"{key}: id {mid!r} repeats methods[{seen[mid]}]; each method needs its own "
                f"method/norm/eps"
            )
        seen[mid] = i
        same = (kind, method.get("norm"), parse_eps(method.get("eps", 0), f"{key}.eps"))
        if same in parsed:
            j = parsed[same]
            raise ConfigError(
                f"{key}: {kind} {same[1] or ''} eps {method.get('eps')!r} is methods[{j}] again "
                f"(eps {config['methods'][j].get('eps')!r}): the same training twice; keep one"
            )
        parsed[same] = i
    check_external_models(config)
    seeds = config.get("seeds") or []
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(
                f"seeds[{i}]: {seed!r} must be an integer in [0, 2**32) (what torch and numpy "
                f"take as a seed)"
            )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {list(seeds)!r} repeats a seed")
    if "eps" in (config.get("evaluation") or {}):
        if parse_eps(config["evaluation"]["eps"], "evaluation.eps") == 0:
            raise ConfigError(
                f"evaluation.eps: {config['evaluation']['eps']!r} attacks with radius 0, so every "
                f"robust accuracy would be the clean one; give the evaluation attack's radius "
                f"(e.g. 0.1 or '8/255')"
            )
        check_linf_budget(config["evaluation"], "evaluation")
    inputs = (config.get("activations") or {}).get("inputs")
    if isinstance(inputs, list) and inputs and BENIGN not in inputs:
        raise ConfigError(
            f"activations.inputs: {inputs!r} lacks {BENIGN!r}, which every analysis reads (the "
            f"adversarial stores are compared with the benign ones); add it"
        )
    directions = (config.get("transfer") or {}).get("directions")
    if isinstance(inputs, list) and directions and OWN_ADVERSARIAL not in inputs:
        raise ConfigError(
            f"transfer.directions: {directions!r} transfer each model's adversarial examples, "
            f"but activations.inputs {inputs!r} lacks {OWN_ADVERSARIAL!r}, so none are made; "
            f"add {OWN_ADVERSARIAL!r} to activations.inputs or remove transfer.directions"
        )
    _check_choices(
        (config.get("activations") or {}).get("inputs"),
        "activations.inputs",
        [BENIGN, OWN_ADVERSARIAL],
        f"; transfer inputs ({TRANSFER}{{source}}) come with the transfer analysis "
        f"(config transfer.directions)",
    )
    from robrep.study.study import TRANSFER_DIRECTIONS

    _check_choices(
        (config.get("transfer") or {}).get("directions"),
        "transfer.directions",
        list(TRANSFER_DIRECTIONS),
    )
    version = ((config.get("evaluation") or {}).get("autoattack") or {}).get("version")
    if version is not None:
        check_autoattack_version(version)
    if config.get("analyses") == []:
        from robrep.study.analyses import ANALYSES

        raise ConfigError(
            f"analyses: empty, so nothing would be compared; choose from {', '.join(ANALYSES)}"
        )


def check_external_models(config: Mapping[str, Any]) -> None:
    """Each `external_models` entry: a unique safe name, a study dataset, a buildable
    architecture, a method as for training (its eps parsed, no training-only keys), the
    dataset's image size when it gives `input_size`, an existing checkpoint, and a model id no
    trained model or other entry has; and some model at all."""
    from robrep.learn.architectures import arch_kind, arch_parts, check_architecture

    entries = config.get("external_models") or []
    trained = [config.get(k) or [] for k in ("architectures", "methods", "seeds")]
    if any(trained) and not all(trained):
        empty = [
            k for k, v in zip(("architectures", "methods", "seeds"), trained, strict=True) if not v
        ]
        raise ConfigError(
            f"{', '.join(empty)}: empty, so no model would be trained; give "
            f"architectures, methods and seeds, or none of them (external models only)"
        )
    if "datasets" in config and not entries and not all(trained):
        raise ConfigError(
            "no models: give architectures, methods and seeds to train, or external_models"
        )
    datasets = list(config.get("datasets") or [])
    trained_ids = {
        (d, a, method_id(m), s)
        for d in datasets
        for a in trained[0]
        for m in trained[1]
        if isinstance(m, Mapping) and m.get("method") in METHODS
        for s in trained[2]
    }
    names: dict[str, int] = {}
    ids: dict[tuple, int] = {}
    for i, entry in enumerate(entries):
        key = f"external_models[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}: {entry!r} must be a mapping with name, dataset, arch, ...")
        name = check_safe_name(entry.get("name"), f"{key}.name")
        if name in names:
            raise ConfigError(f"{key}.name: {name!r} repeats external_models[{names[name]}]")
        names[name] = i
        if entry.get("dataset") not in datasets:
            raise ConfigError(
                f"{key}.dataset: {entry.get('dataset')!r} is not one of the study's datasets "
                f"({', '.join(map(str, datasets))})"
            )
        try:
            check_architecture(str(entry.get("arch")))
        except ValueError as err:
            raise ConfigError(f"{key}.arch: {err}") from None
        method = entry.get("method")
        if not isinstance(method, Mapping) or method.get("method") not in METHODS:
            raise ConfigError(
                f"{key}.method: {method!r} must be {{method: standard}} or {{method: pgd|trades, "
                f"norm: linf|l2, eps: ...}}"
            )
        if method["method"] != "standard":
            if method.get("norm") not in NORMS or "eps" not in method:
                raise ConfigError(f"{key}.method: {method['method']} needs norm and eps")
            if parse_eps(method["eps"], f"{key}.method.eps") == 0:
                raise ConfigError(f"{key}.method.eps: 0 is method 'standard'")
            check_linf_budget(method, f"{key}.method")
        elif set(method) - {"method"}:
            raise ConfigError(f"{key}.method: standard takes no {sorted(set(method) - {'method'})}")
        if "input_size" in entry:
            from robrep.learn.data import input_geometry

            options = (config.get("dataset_options") or {}).get(entry["dataset"])
            _, size = input_geometry(entry["dataset"], options)
            if entry["input_size"] != size:
                raise ConfigError(
                    f"{key}.input_size: the weights expect {entry['input_size']} px images, "
                    f"but {entry['dataset']} is prepared at {size} px; set "
                    f"dataset_options.{entry['dataset']}.image_size: {entry['input_size']} "
                    f"(every model of the dataset sees the same images)"
                )
        checkpoint = Path(str(entry.get("checkpoint")))
        if not checkpoint.is_file():
            raise ConfigError(f"{key}.checkpoint: {str(checkpoint)!r} is not a file")
        if arch_kind(entry["arch"]) == "robustbench":
            from robrep.learn.data import DATASET_INFO
            from robrep.learn.robustbench_zoo import check_entry

            threat, zoo_name = arch_parts(entry["arch"])
            try:
                check_entry(
                    entry["arch"],
                    threat,
                    zoo_name,
                    entry["dataset"],
                    DATASET_INFO[entry["dataset"]].classes,
                    checkpoint,
                    method.get("norm"),
                )
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None
        model = (entry["dataset"], entry["arch"], method_id(method), int(entry.get("seed", 0)))
        if model in trained_ids:
            raise ConfigError(
                f"{key}: its model id {'/'.join(map(str, model[:3]))}/seed{model[3]} is also "
                f"trained by this config; give it another seed"
            )
        if model in ids:
            raise ConfigError(
                f"{key}: same dataset, arch, method and seed as external_models[{ids[model]}]; "
                f"give one of them another seed"
            )
        ids[model] = i


def external_models(config: Mapping[str, Any]) -> dict[ModelKey, dict[str, Any]]:
    """The `external_models` entries by model id, each with its method resolved (as for
    training: `resolve_method`) and its defaults filled."""
    out = {}
    for entry in config.get("external_models") or []:
        method = resolve_method(entry["method"])
        key = ModelKey(entry["dataset"], entry["arch"], method["id"], int(entry.get("seed", 0)))
        out[key] = {
            "format": "torch",
            "strip_prefix": "module.",
            "normalize": "none",
            "seed": 0,
            **entry,
            "method": method,
        }
    return out


def _check_choices(values: Any, key: str, valid: list[str], hint: str = "") -> None:
    """Each of a list of names must be one of `valid`; the error names the bad one and `valid`."""
    for i, value in enumerate(values if isinstance(values, list) else []):
        if value not in valid:
            raise ConfigError(
                f"{key}[{i}]: unknown {value!r}{suggest(str(value), valid)}; valid: "
                f"{', '.join(valid)}{hint}"
            )


def check_linf_budget(attack: Mapping[str, Any], key: str) -> None:
    """An L∞ eps or step size of 1 or more spans the whole [0, 1] pixel range: refused."""
    if attack.get("norm") != "linf":
        return
    eps = parse_eps(attack.get("eps", 0), f"{key}.eps")
    if eps >= 1:
        raise ConfigError(
            f"{key}.eps: {attack['eps']!r} is >= 1, the whole [0, 1] pixel range under L∞; "
            f"image attacks use e.g. 8/255 (CIFAR) or 0.1 (digits)"
        )
    step = attack.get("step_size")
    if step is not None and not 0 < float(step) <= 1:
        raise ConfigError(
            f"{key}.step_size: {step!r} must lie in (0, 1] on [0, 1] images (L∞); the default "
            f"is 2.5 eps / steps"
        )


def check_analyses(config: Mapping[str, Any]) -> None:
    """Every configured analysis has at least one pair to compare in this config; refused at
    start-up otherwise, naming what it compares. Runs on the validated config."""
    from robrep.study.analyses import ANALYSES

    study = study_from_config(config)
    for name in config["analyses"]:
        if not list(ANALYSES[name].pairs(study)):
            raise ConfigError(
                f"analyses: {name!r} compares {ANALYSES[name].compares}, and this config gives it "
                f"nothing to compare; add what it needs or drop it from analyses"
            )


def check_metrics(config: Mapping[str, Any]) -> None:
    """minibatch_cka is always measured (the summaries and figures are built on it); full-data
    metrics need raw features, refused when no layer keeps any. Runs on the validated config."""
    metrics = config["similarity"]["metrics"]
    if MINIBATCH_CKA not in metrics:
        raise ConfigError(
            f"similarity.metrics: {list(metrics)!r} lacks 'minibatch_cka', on which every summary "
            f"and figure is built; add it"
        )
    neighbours = [m for m in metrics if m in GRAM_MEASURES and "knn_k" in GRAM_MEASURES[m].reads]
    k, act = config["similarity"]["knn_k"], config["activations"]
    for dataset, used in examples_used(config).items() if neighbours else ():
        smallest = min(used, act["cka_batch_size"])  # a shorter last batch is left out
        if k > smallest - 2:
            raise ConfigError(
                f"similarity.knn_k: {k} neighbours ({neighbours[0]}) need minibatches of at "
                f"least k + 2 examples, and {dataset}'s have {smallest} ({used} examples, "
                f"activations.cka_batch_size {act['cka_batch_size']}); set knn_k <= "
                f"{max(smallest - 2, 1)} or raise cka_batch_size"
            )
    full = [m for m in metrics if m not in GRAM_MEASURES]
    if full and config["activations"].get("features") == "none":
        raise ConfigError(
            f"similarity.metrics: {full[0]!r} {FEATURE_METRICS_NOTE}, but "
            f"activations.features is 'none'; set activations.features (blocks, all or a list) "
            f"or keep only minibatch_cka"
        )


def check_fixed_metrics(config: Mapping[str, Any], study: Study) -> None:
    """Refuse a full-data metric that is fixed by construction for the study's N and D: where a
    model's widest feature layer keeps D >= N - 1 values per example, its centred features span
    the whole centred space, so every canonical correlation is 1 and mean CCA, mean rho² and
    PWCCA are 1 whatever the networks (`similarity.full.SPAN_FIXED`). Loads torch (the model
    costs) only when such a metric is asked for."""
    from robrep.similarity.full import SPAN_FIXED

    fixed = [m for m in config["similarity"]["metrics"] if m in SPAN_FIXED]
    if not fixed:
        return
    from robrep.learn.cost import model_cost
    from robrep.learn.data import DATASET_INFO, input_geometry

    examples = examples_used(config)
    layers, features = config["activations"]["layers"], feature_layers(config)
    for dataset, arch in dict.fromkeys((m.dataset, m.arch) for m in study.models):
        channels, size = input_geometry(dataset, config["dataset_options"].get(dataset))
        cost = model_cost(
            arch,
            channels,
            size,
            DATASET_INFO[dataset].classes,
            layers if isinstance(layers, str) else tuple(layers),
            config["activations"].get("pool"),
            features if isinstance(features, str) else tuple(features),
        )
        n = examples[dataset]
        if cost.widest_feature >= n - 1:
            raise ConfigError(
                f"similarity.metrics: {fixed[0]!r} is 1 by construction for {arch} on {dataset}: "
                f"its widest feature layer keeps D = {cost.widest_feature} values per example, "
                f"at least N - 1 = {n - 1} (activations.n_examples {n}), so its centred features "
                f"span every direction and every canonical correlation is 1; drop "
                f"{', '.join(fixed)}, or make D < N - 1 (a smaller activations.pool, narrower "
                f"activations.features, or more activations.n_examples)"
            )


def test_subset_sizes(config: Mapping[str, Any], n: int) -> dict[str, int]:
    """Per dataset, a seeded test subset of `n` examples: `n`, at most its test split (the one
    clamp, also behind the job resource estimates). Runs on the validated config."""
    from robrep.learn.data import examples_in_test_split

    return {
        d: min(n, examples_in_test_split(d, config["dataset_options"].get(d)))
        for d in config["datasets"]
    }


def examples_used(config: Mapping[str, Any]) -> dict[str, int]:
    """Examples each dataset's stores hold: `activations.n_examples`, at most its test split."""
    return test_subset_sizes(config, config["activations"]["n_examples"])


def autoattack_examples(config: Mapping[str, Any]) -> dict[str, int]:
    """Examples AutoAttack attacks per dataset: its `n_examples`, at most the test split (not the
    stores' subset: it is an evaluation of the model, not of the stores)."""
    return test_subset_sizes(config, config["evaluation"]["autoattack"]["n_examples"])


def clamp_warnings(config: Mapping[str, Any]) -> list[str]:
    """One line per seeded test subset and dataset whose test split is smaller than the subset
    asked for, with both numbers."""
    asked = {
        "activations.n_examples": (
            config["activations"]["n_examples"],
            examples_used(config),
            "its stores use",
        ),
        "evaluation.autoattack.n_examples": (
            config["evaluation"]["autoattack"]["n_examples"],
            autoattack_examples(config),
            "AutoAttack attacks",
        ),
    }
    return [
        f"{key}: {n} is more than the {used} examples of the {d} test split; {what} all {used}"
        for key, (n, sizes, what) in asked.items()
        for d, used in sizes.items()
        if used < n
    ]


# The unbiased HSIC_1 estimator needs n >= 4 examples (Song et al. 2012), so does every measure.
MIN_TEST_EXAMPLES = 4


def check_test_splits(config: Mapping[str, Any]) -> None:
    """A test split too small to compare anything on (a tiny `test_fraction`) is refused naming
    the dataset's options, before any check that would blame a setting of the measures."""
    from robrep.learn.data import examples_in_test_split

    for dataset in config["datasets"]:
        options = config["dataset_options"].get(dataset)
        n = examples_in_test_split(dataset, options)
        if n < MIN_TEST_EXAMPLES:
            raise ConfigError(
                f"dataset_options.{dataset}: {options} leaves {n} test examples; the "
                f"measures need at least {MIN_TEST_EXAMPLES} (raise test_fraction)"
            )


def check_minibatches(config: Mapping[str, Any]) -> None:
    """The jackknife interval leaves out one minibatch of a pass at a time: refused when a pass
    has fewer than 2 (n_examples used and cka_batch_size decide; more passes reshuffle the same
    examples, so they do not help), rather than silently dropped."""
    act = config["activations"]
    if not config["similarity"]["intervals"]:
        return
    for dataset, used in examples_used(config).items():
        batches = -(-used // act["cka_batch_size"])
        if batches < 2:
            raise ConfigError(
                f"similarity.intervals: the jackknife leaves out one minibatch of a pass at a "
                f"time, but {dataset}'s passes have {batches} ({used} examples, "
                f"activations.cka_batch_size {act['cka_batch_size']}); set cka_batch_size <= "
                f"{max(used // 2, 1)} or intervals: false"
            )


def check_autoattack_version(version: Any) -> None:
    """evaluation.autoattack.version: a version name or a list of attack names."""
    from robrep.learn.robustness import ATTACKS, VERSIONS

    key = "evaluation.autoattack.version"
    if isinstance(version, str):
        if version not in VERSIONS:
            raise ConfigError(
                f"{key}: unknown version {version!r}; valid: {', '.join(VERSIONS)} or a list of "
                f"attacks ({', '.join(ATTACKS)})"
            )
        return
    if not isinstance(version, list) or not version:
        raise ConfigError(f"{key}: {version!r} is neither a version nor a list of attacks")
    for i, attack in enumerate(version):
        if attack not in ATTACKS:
            raise ConfigError(
                f"{key}[{i}]: unknown attack {attack!r}{suggest(str(attack), list(ATTACKS))}; "
                f"valid: {', '.join(ATTACKS)}"
            )


def check_probes(config: Mapping[str, Any]) -> None:
    """Linear probes need 2 or more folds (0 turns them off) and stores that keep features."""
    folds = config["probes"]["folds"]
    if folds == 1:
        raise ConfigError("probes.folds: 1 is no cross-validation; use 0 (no probes) or >= 2")
    act = config["activations"]
    if folds and act.get("features", act["layers"]) in ("none", []):
        raise ConfigError(
            "probes.folds: linear probes read raw features, but activations.features is none; "
            "keep features for some layers or set probes.folds: 0"
        )


def study_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without its execution settings (device, threads, resources): what the results
    depend on, recorded in the summary's attributes."""
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def activation_checkpoints(config: Mapping[str, Any]) -> list[str]:
    """Checkpoint names to extract: `final`, `best`, `epoch{e}`; epochs must be saved by training."""
    training = config["training"]
    saved = saved_epochs(training["epochs"], training["checkpoint_every"])
    wanted = config["activations"].get("checkpoints")
    if wanted is None:
        return [f"epoch{e}" for e in saved if e != training["epochs"]] + ["final", "best"]
    names = []
    for i, item in enumerate(wanted):
        if isinstance(item, int) and not isinstance(item, bool):
            if item not in saved:
                raise ConfigError(
                    f"activations.checkpoints[{i}]: epoch {item} is not saved by training "
                    f"(epochs {training['epochs']}, checkpoint_every "
                    f"{training['checkpoint_every']}); saved epochs: {saved}, or final, best"
                )
            names.append(f"epoch{item}")
        else:
            names.append(str(item))
    return list(dict.fromkeys(names))


def architectures_of(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The architectures trained on `dataset`: config `architectures`, one list for every dataset
    or a list per dataset (a dataset it does not name trains none)."""
    archs = config.get("architectures") or []
    return list(archs.get(dataset, [])) if isinstance(archs, Mapping) else list(archs)


def study_from_config(config: Mapping[str, Any]) -> Study:
    """The study of a validated config: every dataset x architecture x method x seed, then the
    imported models, with the resolved methods, the activation checkpoints and each
    architecture's family."""
    from robrep.learn.architectures import arch_family
    from robrep.study.study import TRANSFER_DIRECTIONS, Study

    methods = {m["id"]: m for m in map(resolve_method, config.get("methods", []))}
    external = external_models(config)
    trained = tuple(
        ModelKey(d, a, m, s)
        for d in config["datasets"]
        for a in architectures_of(config, d)
        for m in methods
        for s in config.get("seeds", [])
    )
    for entry in external.values():
        methods.setdefault(entry["method"]["id"], entry["method"])
    models = trained + tuple(external)
    architectures = tuple(dict.fromkeys(m.arch for m in models))
    return Study(
        models=models,
        methods=methods,
        checkpoints=tuple(activation_checkpoints(config)),
        adversarial_inputs=OWN_ADVERSARIAL in config["activations"]["inputs"],
        seeds=tuple(sorted({int(m.seed) for m in models})),
        architectures=architectures,
        transfer=tuple(config.get("transfer", {}).get("directions", TRANSFER_DIRECTIONS)),
        external=frozenset(external),
        families={arch: arch_family(arch) for arch in architectures},
    )


def feature_layers(config: Mapping[str, Any]) -> str | list[str]:
    """The layers whose stores keep raw features (config `activations.features`; default: the
    Gram layers, `activations.layers`)."""
    act = config["activations"]
    return act.get("features", act["layers"])


def evaluation_attack(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The evaluation attack's settings on `dataset`: config `evaluation` with its
    `evaluation.datasets.<dataset>` changes, less the batch size and AutoAttack (which has its
    own rule: a change to it never retrains a model), eps parsed. A change for one dataset reruns
    that dataset's models only."""
    attack = dict(config["evaluation"])
    changes = (attack.pop("datasets", None) or {}).get(dataset) or {}
    attack.update(changes)
    key = f"evaluation.datasets.{dataset}" if changes else "evaluation"
    attack["eps"] = parse_eps(attack["eps"], f"{key}.eps")
    attack.pop("batch_size", None)
    attack.pop("autoattack", None)
    return attack


def check_evaluation_datasets(config: Mapping[str, Any]) -> None:
    """`evaluation.datasets` names datasets of the run, and each one's attack is a valid one."""
    changes = config["evaluation"].get("datasets") or {}
    unknown = sorted(set(changes) - set(config["datasets"]))
    if unknown:
        raise ConfigError(
            f"evaluation.datasets: {', '.join(unknown)} not in datasets; valid: "
            f"{', '.join(config['datasets'])}"
        )
    for dataset in changes:
        check_linf_budget(evaluation_attack(config, dataset), f"evaluation.datasets.{dataset}")


def check_layer_selections(config: Mapping[str, Any], study: Study) -> None:
    """Listed `activations.layers` / `features` name layers of every architecture of the study
    (checked on each architecture built with its default shapes; torch is loaded only then)."""
    for key, selection in (
        ("layers", config["activations"]["layers"]),
        ("features", feature_layers(config)),
    ):
        if not isinstance(selection, list):
            continue
        from robrep.learn.models import build_model

        for arch in study.architectures:
            try:
                build_model(arch, 3, 10, [0.5] * 3, [0.5] * 3).probe_layers(selection)
            except ValueError as err:
                raise ConfigError(f"activations.{key}: {err}") from err


def load_config(
    config: dict[str, Any], schema: Mapping[str, Any], validate: Callable[[dict], None]
) -> tuple[Study, list[str]]:
    """Check a workflow config and fill its defaults, in place: unknown keys and the checks that
    need code first (clearer messages than the schema's), then `validate` (the schema, which sets
    its defaults), then the checks on the completed config. Returns the study and the warnings
    to show; raises `ConfigError` naming the bad value and the valid choices."""
    check_unknown_keys(config, schema)
    check_config(config)
    validate(config)
    whole_numbers_as_int(config, schema)
    asked = "analyses" in config  # listed analyses must have pairs; the default skips those without
    if not asked:
        from robrep.study.analyses import ANALYSES

        config["analyses"] = list(ANALYSES)
    check_test_splits(config)
    check_evaluation_datasets(config)
    check_metrics(config)
    check_minibatches(config)
    check_probes(config)
    if asked:
        check_analyses(config)
    study = study_from_config(config)
    check_layer_selections(config, study)
    check_fixed_metrics(config, study)
    return study, clamp_warnings(config)
