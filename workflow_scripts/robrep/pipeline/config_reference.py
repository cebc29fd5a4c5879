"""config/README.md, the reference of every config key, rendered from config/schema.yaml: its type,
default and meaning come from the schema, and which stage a change reruns from `RERUNS` here.

`python -m robrep.pipeline.config_reference config/schema.yaml > config/README.md` writes it;
tests/test_config_reference.py fails when the committed file differs from the rendering.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Which jobs a change of a key reruns (each stage's params are exactly the settings that define
# its outputs); the longest matching prefix of a key applies. Every study setting is also in the
# summary's attributes, so a change of any key but device/threads/resources reruns aggregate and
# figures too.
RERUNS = {
    "data_root": "prepare_data and everything after it",
    "split_seed": "prepare_data and everything after it",
    "dataset_options": "that dataset's prepare_data and everything after it",
    "device": "nothing (how jobs run, not what they compute)",
    "threads": "nothing (how jobs run, not what they compute)",
    "resources": "nothing (how jobs run, not what they compute)",
    "datasets": "adds or drops that dataset's jobs; nothing else",
    "architectures": "adds or drops that architecture's models; nothing else",
    "methods": "adds or drops that method's models (a changed method: its models and what follows)",
    "seeds": "adds or drops that seed's models; nothing else",
    "external_models": "that model's import_model and what follows",
    "training": "train and everything after it (imported models are kept)",
    "training.val_fraction": "prepare_data and everything after it",
    "evaluation": "train, import_model, attack, autoattack and what follows",
    "evaluation.autoattack": "autoattack only (then the summary)",
    "activations": "extract, similarity, probe (no training)",
    "activations.batch_size": "attack and the stores that read its examples",
    "activations.checkpoints": "which stores and comparisons exist; nothing else",
    "activations.inputs": "which stores and comparisons exist; nothing else",
    "similarity": "similarity (no extraction)",
    "probes": "probe (no extraction)",
    "transfer": "which transfer comparisons exist; nothing else",
    "analyses": "which comparisons exist; nothing else",
}


def _reruns(key: str) -> str:
    parts = key.replace("[]", "").split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in RERUNS:
            return RERUNS[prefix]
    raise KeyError(f"config key {key!r} has no RERUNS entry (robrep.pipeline.config_reference)")


def _type(node: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    if "$ref" in node:
        return _type(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(n, defs) for n in node["oneOf"])
    kind = node.get("type", "any")
    if kind == "array" and "items" in node:
        return f"list of {_type(node['items'], defs)}"
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def keys(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(dotted key, schema node) of every key, parents before their children; list items of
    objects as `key[].child`."""
    defs = schema.get("$defs", {})

    def walk(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for name, child in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            yield key, child
            yield from walk(child, f"{key}.")
            items = child.get("items", {})
            if items.get("type") == "object":
                yield from walk(items, f"{key}[].")
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping) and "$ref" in extra:
            yield from walk(defs[extra["$ref"].rsplit("/", 1)[-1]], f"{prefix}<name>.")

    yield from walk(schema, "")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(schema: Mapping[str, Any]) -> str:
    """The markdown reference of every key of `schema`."""
    defs = schema.get("$defs", {})
    rows = []
    for key, node in keys(schema):
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
        rows.append(
            f"| `{key}` | {_cell(_type(node, defs))} | {default} | "
            f"{_cell(node.get('description', ''))} | {_cell(_reruns(key))} |"
        )
    return (
        "# Configuration reference\n\n"
        "<!-- Rendered from config/schema.yaml by robrep.pipeline.config_reference; do not edit:\n"
        "     .venv/bin/python -m robrep.pipeline.config_reference config/schema.yaml > "
        "config/README.md -->\n\n"
        "Every key of `config/schema.yaml`: its type, default and meaning, and which jobs a change "
        "of it reruns (each stage's params are exactly the settings that define its outputs; a "
        "change of any key but `device`, `threads` and `resources` also reruns the summary and "
        "figures, which record the study settings). `config/config.yaml` is the default study, "
        "`config/paper.yaml` the paper's; the conventions for ids and eps are in "
        "[docs/configuration.md](../docs/configuration.md).\n\n"
        "| key | type | default | meaning | a change reruns |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    import yaml

    args = sys.argv[1:] if argv is None else argv
    schema_path = Path(args[0] if args else "config/schema.yaml")
    sys.stdout.write(render(yaml.safe_load(schema_path.read_text())))


if __name__ == "__main__":
    main()
