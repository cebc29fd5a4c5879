"""The schema's lists are the library's registries: one test fails when either drifts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robrep.ids import BENIGN, OWN_ADVERSARIAL
from robrep.io.zarrio import COMPRESSORS
from robrep.learn.data import DATASETS
from robrep.learn.external import FORMATS
from robrep.learn.robustness import ATTACKS, VERSIONS
from robrep.learn.robustness import NORMS as AUTOATTACK_NORMS
from robrep.learn.training import PRECISIONS, SCHEDULES
from robrep.pipeline.config import METHODS, NORMS
from robrep.pipeline.jobs import VALUE_BYTES
from robrep.runtime import DEVICES
from robrep.store.format import LAYER_VALUES
from robrep.study.study import TRANSFER_DIRECTIONS

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())


def node(*path: str | int) -> dict:
    """The schema node at `path`: property names, `items`, or an index into `oneOf`."""
    here = SCHEMA
    for step in path:
        if isinstance(step, int):
            here = here["oneOf"][step]
        elif step == "items":
            here = here["items"]
        else:
            here = here["properties"][step]
    return here


REGISTRIES = {
    "device": (("device",), DEVICES),
    "datasets": (("datasets", "items"), DATASETS),
    "methods.method": (("methods", "items", "method"), METHODS),
    "methods.norm": (("methods", "items", "norm"), NORMS),
    "external_models.format": (("external_models", "items", "format"), FORMATS),
    "external_models.method.method": (("external_models", "items", "method", "method"), METHODS),
    "external_models.method.norm": (("external_models", "items", "method", "norm"), NORMS),
    "training.schedule": (("training", "schedule"), SCHEDULES),
    "training.precision": (("training", "precision"), PRECISIONS),
    "evaluation.norm": (("evaluation", "norm"), NORMS),
    "evaluation.autoattack.version": (("evaluation", "autoattack", "version", 0), tuple(VERSIONS)),
    "evaluation.autoattack.version[]": (
        ("evaluation", "autoattack", "version", 1, "items"),
        ATTACKS,
    ),
    "activations.inputs": (("activations", "inputs", "items"), (BENIGN, OWN_ADVERSARIAL)),
    "activations.dtype": (("activations", "dtype"), tuple(VALUE_BYTES)),
    "activations.compressor": (("activations", "compressor"), COMPRESSORS),
    "activations.compat": (("activations", "compat"), LAYER_VALUES),
    "transfer.directions": (("transfer", "directions", "items"), TRANSFER_DIRECTIONS),
}


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_schema_enum_is_the_registry(key):
    path, registry = REGISTRIES[key]
    assert node(*path)["enum"] == list(registry), f"config/schema.yaml {key} drifted"


def test_every_enum_of_the_schema_is_tied_or_structural():
    """No enum is added to the schema without a registry here (the structural ones are listed:
    channel counts and keyword values of oneOf alternatives)."""
    structural = {
        (1, 3),
        ("none",),
        ("blocks", "all"),
        ("blocks", "all", "none"),
        ("final", "best"),
    }
    tied = {tuple(registry) for _, registry in REGISTRIES.values()}

    def enums(here):
        if isinstance(here, dict):
            if "enum" in here:
                yield tuple(here["enum"])
            for value in here.values():
                yield from enums(value)
        elif isinstance(here, list):
            for value in here:
                yield from enums(value)

    untied = {e for e in enums(SCHEMA) if e not in tied | structural}
    assert not untied, f"schema enums with no registry test: {sorted(untied)}"


def test_norms_are_the_attacks_norms():
    assert set(NORMS) == set(AUTOATTACK_NORMS)
