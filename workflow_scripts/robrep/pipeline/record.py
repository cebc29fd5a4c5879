"""The run record, `results/run.json`: which workflow directory last ran on a results tree, with
which config files and settings.

Snakemake keeps what it knows of a tree's outputs (their parameters, code and inputs) in the
`.snakemake/` of the directory it runs in. Two working directories that share one `results/` (a
symlink, a shared scratch path) therefore each trust outputs the other rewrote: with other
settings, each sees "nothing to do" over a mix. The record closes that gap: a run refuses a tree
another directory last wrote with other settings (`check_reuse`), and `robrep verify` reads the
settings back to know which outputs the tree should hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robrep.io.checksums import read_json, write_json

RECORD = "run.json"  # under results/


class MixedResultsError(ValueError):
    """A run would mix its outputs into a tree another directory wrote with other settings."""


@dataclass(frozen=True)
class RunRecord:
    """The directory a run started in, its config files (absolute), the config as given (the
    merged files: what `robrep verify` loads again) and the settings as the run used them
    (defaults filled, execution settings left out: what two runs are compared on)."""

    workflow_dir: str
    configfiles: tuple[str, ...] = ()
    given: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return _plain(
            {
                "workflow_dir": self.workflow_dir,
                "configfiles": list(self.configfiles),
                "given": self.given,
                "settings": self.settings,
            }
        )


def _plain(value: Any) -> Any:
    """The JSON form of a config (tuples as lists, keys as strings): what reads back."""
    return json.loads(json.dumps(value, default=str))


def record_path(results: str | Path) -> Path:
    return Path(results) / RECORD


def read_record(results: str | Path) -> RunRecord | None:
    """The tree's record, verified (`DamagedArtefactError` when damaged); None without one (a
    tree no run has started on yet, or one an older robrep wrote)."""
    path = record_path(results)
    if not path.exists():
        return None
    body = read_json(path)
    return RunRecord(
        body["workflow_dir"], tuple(body["configfiles"]), body["given"], body["settings"]
    )


def write_record(results: str | Path, record: RunRecord) -> None:
    """Record `record` as the tree's last run (atomically, with its checksum); a record that
    already says the same is left as it is."""
    try:
        if (old := read_record(results)) is not None and old.as_json() == record.as_json():
            return
    except Exception:  # noqa: BLE001 - a damaged record is replaced by the run's own
        pass
    write_json(record.as_json(), record_path(results))


def setting_differences(
    there: Mapping[str, Any], here: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """`key: <value there> there, <value here> here` for each setting that differs, by dotted key
    (mappings compared key by key, anything else as a whole)."""
    lines = []
    for key in sorted(set(there) | set(here), key=str):
        name = f"{prefix}{key}"
        a, b = there.get(key, "(not set)"), here.get(key, "(not set)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += setting_differences(a, b, f"{name}.")
        elif a != b:
            lines.append(f"{name}: {json.dumps(a)} there, {json.dumps(b)} here")
    return lines


def check_reuse(results: str | Path, record: RunRecord, show: int = 5) -> None:
    """Refuse (`MixedResultsError`) a tree whose record names another workflow directory and
    other settings than `record`: its outputs would mix. The same directory may change settings
    (its Snakemake metadata reruns what they define); another directory may continue with the
    same settings. A damaged record raises `DamagedArtefactError`."""
    old = read_record(results)
    if old is None or Path(old.workflow_dir) == Path(record.workflow_dir):
        return
    differences = setting_differences(old.settings, _plain(record.settings))
    if not differences:
        return
    listed = "; ".join(differences[:show])
    more = f" (and {len(differences) - show} more)" if len(differences) > show else ""
    raise MixedResultsError(
        f"{results}/ was last written by the run in {old.workflow_dir}, with other settings "
        f"({listed}{more}). Its Snakemake metadata is there, not here, so this run would mix "
        f"outputs of both settings. Run from {old.workflow_dir}, or use this run's settings "
        f"with a results/ of its own; to take the tree over as it is, remove "
        f"{record_path(results)}"
    )


def absolute(paths: Sequence[str | Path]) -> tuple[str, ...]:
    """Config file paths as the record keeps them (absolute: rebuild commands work anywhere)."""
    return tuple(str(Path(p).resolve()) for p in paths)
