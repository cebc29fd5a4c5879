"""Verify a results tree: every artefact's checksums and completeness, and that the two stores of
every comparison hold the same examples in the same minibatches.

Snakemake decides what to rerun from file times, parameters and code, so it cannot see a chunk
damaged inside a store or a comparison file edited in place. `verify_results` reads the data
splits, every weights file, metrics.json, autoattack.json, adversarial examples and activation store (every chunk),
comparison, probe file and summary under `results/` with the same verified readers the workflow uses, and lists what is
damaged with the command that rebuilds it (run from the directory that holds `results/`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robrep.io.checksums import rebuild_command


@dataclass(frozen=True)
class Finding:
    """One damaged (or suspect) artefact: where, what is wrong, and how to rebuild it."""

    path: Path
    problem: str
    rebuild: str
    targets: tuple[str, ...] = ()  # what `rebuild` forces, as the workflow names them

    def __str__(self) -> str:
        return f"DAMAGED {self.path}\n  {self.problem}\n  rebuild: {self.rebuild}"


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
    return tuple(
        str(Path("results") / t.relative_to(results) if t.is_relative_to(results) else t)
        for t in targets
    )


def rebuild_all(findings: list[Finding]) -> str | None:
    """One command that rebuilds every finding at once: one Snakemake run forcing all their
    targets, so a rebuild never stops at the next damaged file it reads (one command per finding
    did, with 11 damaged). None without findings."""
    targets = list(dict.fromkeys(t for f in findings for t in f.targets))
    return rebuild_command(" ".join(targets)) if targets else None


def run_holding_lock(results: Path) -> Path | None:
    """The workflow directory beside `results` when a Snakemake run holds its lock there (files
    it is writing may read as damage until it ends), else None."""
    locks = results.resolve().parent / ".snakemake" / "locks"
    return locks.parent.parent if locks.is_dir() and any(locks.iterdir()) else None


def verify_results(results: str | Path, progress: bool = True) -> tuple[int, list[Finding]]:
    """Verify every artefact under `results`; returns (artefacts checked, findings)."""
    results = Path(results).resolve()
    found = list(artefacts(results))
    findings = []
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
            problem = f"{kind}: {type(err).__name__}: {err}"
            targets = _targets(path, results, err)
            findings.append(Finding(path, problem, rebuild_command(" ".join(targets)), targets))
    if progress and found:
        print(file=sys.stderr)
    return len(found), findings


def leftovers(results: str | Path) -> list[Path]:
    """Partial outputs an interrupted job left behind (the next run removes them)."""
    from robrep.io.atomic import leftovers as partials

    return partials(results)
