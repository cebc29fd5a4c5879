"""config/README.md is the rendering of config/schema.yaml, and every key says what it reruns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robrep.pipeline.config_reference import RERUNS, _reruns, keys, render

ROOT = Path(__file__).parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())


def test_the_committed_reference_is_the_rendered_schema():
    committed = (ROOT / "config" / "README.md").read_text()
    assert committed == render(SCHEMA), (
        "config/README.md is stale: .venv/bin/python -m robrep.pipeline.config_reference "
        "config/schema.yaml > config/README.md"
    )


def test_every_key_has_a_meaning_and_a_rerun_rule():
    for key, node in keys(SCHEMA):
        assert node.get("description"), f"config/schema.yaml: {key} has no description"
        assert _reruns(key)


def test_every_rerun_rule_names_a_key():
    listed = {key.replace("[]", "") for key, _ in keys(SCHEMA)}
    assert set(RERUNS) <= listed, sorted(set(RERUNS) - listed)


def test_an_unknown_key_has_no_rerun_rule():
    with pytest.raises(KeyError, match="no RERUNS entry"):
        _reruns("no_such_key.child")


def test_every_top_level_key_is_in_the_reference():
    text = (ROOT / "config" / "README.md").read_text()
    for key in SCHEMA["properties"]:
        assert f"| `{key}` |" in text
