"""Verify a results tree: every artefact's checksums and completeness, that the two stores of
every comparison hold the same examples in the same minibatches, and that every output the run's
config expects is there.

Snakemake decides what to rerun from file times, parameters and code, so it cannot see a chunk
damaged inside a store or a comparison file edited in place. `verify_results` reads the data
splits, every weights file, metrics.json, autoattack.json, adversarial examples and activation
store (every chunk), comparison, probe file and summary under `results/` with the same verified
readers the workflow uses, lists the expected outputs that are missing (`plan.expected_outputs`
of the run record's config, `robrep.pipeline.record`) and the paths it may not read, and says
how to rebuild each (run from the directory that holds `results/`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robrep.io.checksums import rebuild_command

DAMAGED, MISSING, UNREADABLE = "DAMAGED", "MISSING", "UNREADABLE"


@dataclass(frozen=True)
class Finding:
    """One artefact that does not verify: where, what is wrong, and how to mend it. `status`:
    DAMAGED (fails a check: rebuild it), MISSING (an expected output that is not there: a run
    builds it) or UNREADABLE (permission denied: a rebuild would not help)."""

    path: Path
    problem: str
    rebuild: str
    targets: tuple[str, ...] = ()  # what `rebuild` forces, as the workflow names them
    status: str = DAMAGED

    def __str__(self) -> str:
        action = "fix" if self.status == UNREADABLE else "rebuild"
        return f"{self.status} {self.path}\n  {self.problem}\n  {action}: {self.rebuild}"


class StoresDisagree(ValueError):
    """A comparison's two stores (or the comparison and its stores) do not hold the same
    examples: rebuilding the stores rebuilds the comparison too."""

    def __init__(self, message: str, stores: list[Path]):
        super().__init__(message)
        self.stores = stores


def _splits(path: Path, results: Path) -> None:
    from robrep.learn.data import read_splits

    read_splits(path)


def _weights(path: Path, results: Path) -> None:
    from robrep.io.weights import read_metadata, verified_state

    read_metadata(path)
    verified_state(path)


def _metrics(path: Path, results: Path) -> None:
    from robrep.io.checksums import read_json

    read_json(path)


def _store(path: Path, results: Path) -> None:
    from robrep.store.read import ActivationStore

    ActivationStore(path).verify()


def _adversarial(path: Path, results: Path) -> None:
    from robrep.learn.adversarial import read_adversarial

    read_adversarial(path)


def _comparison(path: Path, results: Path) -> None:
    from robrep.io.checksums import DamagedArtefactError
    from robrep.io.xrio import read_netcdf
    from robrep.store.format import MismatchedStoresError
    from robrep.store.read import ActivationStore, check_aligned

    ds = read_netcdf(path)
    paths = []
    for side in ("a", "b"):
        store = ds.attrs.get(f"store_{side}")
        if store is None:
            raise ValueError(f"names no store_{side} (written by an older robrep?)")
        store = Path(store)
        # Recorded relative to the workflow's directory (`results/...`): found under `results`
        # wherever the tree now lies and whatever it is called.
        paths.append(store if store.is_absolute() else results.joinpath(*store.parts[1:]))
    try:
        for store in paths:
            if not store.exists():
                raise MismatchedStoresError(f"it was computed from {store}, which is gone")
        try:
            stores = [ActivationStore(p) for p in paths]
        except DamagedArtefactError:
            return  # the damaged store is its own finding; rebuilding it reruns this comparison
        check_aligned(stores)
        if int(ds.attrs.get("n_examples", len(stores[0]))) != len(stores[0]):
            raise MismatchedStoresError(
                f"it was computed on {ds.attrs['n_examples']} examples; its stores now hold "
                f"{len(stores[0])} (stale)"
            )
    except MismatchedStoresError as err:
        raise StoresDisagree(str(err), paths) from err
    if "similarity" in ds and not np.isfinite(ds.similarity.values).any():
        raise ValueError("holds no finite similarity")


def _netcdf(path: Path, results: Path) -> None:
    from robrep.io.xrio import read_netcdf

    read_netcdf(path)


def _summary_zarr(path: Path, results: Path) -> None:
    import warnings

    import xarray as xr

    with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp is not a Zarr node
        warnings.simplefilter("ignore")
        with xr.open_zarr(path, consolidated=False) as ds:
            ds.load()


# What is verified, where it lies under results/, and how.
CHECKS: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "splits": ("data/*/splits.npz", _splits),
    "weights": ("models/**/*.safetensors", _weights),
    "metrics": ("models/**/metrics.json", _metrics),
    "autoattack": ("models/**/autoattack.json", _metrics),
    "adversarial examples": ("adversarial/**/*.zarr", _adversarial),
    "store": ("activations/**/*.zarr", _store),
    "comparison": ("similarity/**/*.nc", _comparison),
    "probe": ("probes/**/*.nc", _netcdf),
    "summary": ("summary/*.nc", _netcdf),
    "summary store": ("summary/*.zarr", _summary_zarr),
}


def artefacts(results: Path) -> Iterator[tuple[str, Path]]:
    """(kind, path) of every artefact under `results`, in CHECKS order; partial outputs of an
    interrupted job (`.*.partial`) are not artefacts."""
    for kind, (pattern, _) in CHECKS.items():
        for path in sorted(results.glob(pattern)):
            if not path.name.startswith("."):
                yield kind, path


def _targets(path: Path, results: Path, err: Exception) -> tuple[str, ...]:
    """What rebuilds a damaged artefact, as the workflow names it (`results/...`, run from the
    workflow's directory); a comparison whose stores disagree needs them rebuilt (which reruns
    it too), not itself alone."""
    targets = err.stores if isinstance(err, StoresDisagree) else [path]
    return tuple(_workflow_name(t, results) for t in targets)


def _workflow_name(path: Path, results: Path) -> str:
    return str(
        Path("results") / path.relative_to(results) if path.is_relative_to(results) else path
    )


def rebuild_all(findings: list[Finding], configfiles: Sequence[str] = ()) -> str | None:
    """One command that mends every finding a run can mend: one Snakemake run forcing the
    damaged artefacts' targets, so a rebuild never stops at the next damaged file it reads (one
    command per finding did, with 11 damaged), and building the missing outputs (every run
    does). None when there is nothing a run mends."""
    targets = [t for f in findings if f.status == DAMAGED for t in f.targets]
    if not targets and not any(f.status == MISSING for f in findings):
        return None
    return rebuild_command(" ".join(dict.fromkeys(targets)) or None, configfiles)


def run_holding_lock(results: Path) -> Path | None:
    """The workflow directory beside `results` when a Snakemake run holds its lock there (files
    it is writing may read as damage until it ends), else None."""
    locks = results.resolve().parent / ".snakemake" / "locks"
    return locks.parent.parent if locks.is_dir() and any(locks.iterdir()) else None


def _permission_denied(err: BaseException) -> PermissionError | None:
    """The PermissionError behind a reader's error (readers wrap what they cannot read)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PermissionError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _unlistable(results: Path) -> list[tuple[Path, OSError]]:
    """Directories under `results` that cannot be listed: a walk (and every glob) skips them
    silently, so their artefacts would go unchecked."""
    denied = []
    for _ in os.walk(results, onerror=lambda err: denied.append((Path(err.filename), err))):
        pass
    return denied


def verify_results(
    results: str | Path,
    progress: bool = True,
    expected: Mapping[str, Iterable[str]] | None = None,
    configfiles: Sequence[str] = (),
) -> tuple[int, list[Finding]]:
    """Verify every artefact under `results` and, given `expected` (kind -> the workflow's paths,
    `plan.expected_outputs`), that each expected output is there; returns (artefacts checked,
    findings). Rebuild commands carry `configfiles` (the run record's)."""
    results = Path(results).resolve()
    found = list(artefacts(results))
    fix = "give this user read (and, for a directory, execute) permission, then verify again"
    unlistable = _unlistable(results)
    findings = [
        Finding(path, f"cannot be listed ({err.strerror})", fix, status=UNREADABLE)
        for path, err in unlistable
    ]
    for i, (kind, path) in enumerate(found, 1):
        if progress:
            print(
                f"\r[{i}/{len(found)}] {kind}: {path.name}"[:100].ljust(100),
                end="",
                file=sys.stderr,
                flush=True,
            )
        try:
            CHECKS[kind][1](path, results)
        except Exception as err:  # noqa: BLE001 - every failure is a finding, none stops the walk
            denied = _permission_denied(err)
            if denied is not None:
                problem = f"{kind}: cannot be read ({denied.strerror}: {denied.filename})"
                findings.append(Finding(path, problem, fix, status=UNREADABLE))
                continue
            problem = f"{kind}: {type(err).__name__}: {err}"
            targets = _targets(path, results, err)
            findings.append(
                Finding(path, problem, rebuild_command(" ".join(targets), configfiles), targets)
            )
    if progress and found:
        print(file=sys.stderr)
    for kind, paths in (expected or {}).items():
        for name in paths:
            path = results.joinpath(*Path(name).parts[1:])  # `results/...` -> under `results`
            hidden = any(path.is_relative_to(d) for d, _ in unlistable)  # named as unreadable
            if not hidden and not path.exists():
                problem = f"{kind}: the run's config expects it and it is not there"
                rebuild = rebuild_command(None, configfiles)
                findings.append(Finding(path, problem, rebuild, (name,), status=MISSING))
    return len(found), findings


def leftovers(results: str | Path) -> list[Path]:
    """Partial outputs an interrupted job left behind (the next run removes them)."""
    from robrep.io.atomic import leftovers as partials

    return partials(results)
