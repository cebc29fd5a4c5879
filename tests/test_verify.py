"""`robrep verify` on a real results tree: silent when intact, and names every damaged artefact
(a corrupted chunk, a deleted layer, corrupted weights, a tampered comparison) with its rebuild
command when not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import yaml

from robrep.pipeline.verify import verify_results
from robrep.store.read import ActivationStore

from helpers.stores import chunk_files, corrupt_middle
from helpers.workflow import TINY

pytestmark = pytest.mark.integration


def robrep_verify(results):
    """The console entry point, as a user runs it."""
    robrep = shutil.which("robrep", path=str(sys.executable.rsplit("/", 1)[0]))
    command = [robrep] if robrep else [sys.executable, "-m", "robrep.pipeline.cli"]
    return subprocess.run([*command, "verify", str(results)], capture_output=True, text=True)


def test_verify_lists_every_damaged_artefact_and_its_rebuild(completed_run, tmp_path):
    workdir = tmp_path / "wf"
    shutil.copytree(completed_run / "results", workdir / "results", symlinks=True)
    results = workdir / "results"
    intact = robrep_verify(results)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "all verified" in intact.stdout
    # A copy under another name and place verifies too: comparisons find their stores in it.
    elsewhere = tmp_path / "archive" / "run-2026"
    shutil.copytree(results, elsewhere, symlinks=True)
    moved = robrep_verify(elsewhere)
    assert moved.returncode == 0, moved.stdout[-3000:]

    stores = sorted(results.glob("activations/**/*.zarr"))
    corrupt_middle(chunk_files(stores[0] / "gram")[0])
    deleted = ActivationStore(stores[1]).feature_layers[-1]
    shutil.rmtree(stores[1] / deleted)
    weights = sorted(results.glob("models/**/model.safetensors"))[0]
    corrupt_middle(weights)
    comparison = sorted(results.glob("similarity/cross_layer/**/*.nc"))[0]
    values = xr.load_dataset(comparison, engine="h5netcdf").similarity.values
    data = bytearray(comparison.read_bytes())
    start = data.find(np.ascontiguousarray(values).tobytes()[:32])
    assert start > 0
    data[start + 8 : start + 24] = bytes(16)
    comparison.write_bytes(bytes(data))
    examples = sorted(results.glob("adversarial/**/*.zarr"))[0]
    corrupt_middle(chunk_files(examples / "images")[0])
    # the digest key renamed and a number changed: no digest is damage, not a pass (issue 28)
    metrics = sorted(results.glob("models/**/metrics.json"))[0]
    metrics.write_text(metrics.read_text().replace('"sha256"', '"sha256_"'))
    # metadata that decides coordinates, edited: a store's epoch in its zarr.json (issue 28)
    relabelled = stores[2] / "zarr.json"
    node = json.loads(relabelled.read_text())
    node["attributes"]["epoch"] = int(node["attributes"]["epoch"]) + 1
    relabelled.write_text(json.dumps(node))
    splits = sorted(results.glob("data/*/splits.npz"))[0]
    splits.write_bytes(splits.read_bytes()[:4096])  # truncated

    out = robrep_verify(results)
    assert out.returncode == 1, out.stdout + out.stderr
    for path in (stores[0], stores[1], stores[2], weights, comparison, examples, metrics, splits):
        relative = path.relative_to(workdir)
        assert f"DAMAGED {path}" in out.stdout, (path, out.stdout)
        assert f"rebuild: snakemake --cores all --forcerun {relative}" in out.stdout, out.stdout
    assert "checksum" in out.stdout and repr(deleted) in out.stdout
    assert "no SHA-256 checksum" in out.stdout and "fails its attribute checksum" in out.stdout
    assert "8 damaged" in out.stdout


def test_verify_names_the_stores_to_rebuild_for_a_comparison_whose_store_is_gone(
    completed_run, tmp_path
):
    workdir = tmp_path / "wf"
    shutil.copytree(completed_run / "results", workdir / "results", symlinks=True)
    results = workdir / "results"
    comparison = sorted(results.glob("similarity/robust_vs_standard/**/*.nc"))[0]
    ds = xr.load_dataset(comparison, engine="h5netcdf")
    shutil.rmtree(workdir / ds.attrs["store_b"])
    checked, findings = verify_results(results, progress=False)
    assert checked > 0
    (finding,) = [f for f in findings if f.path == comparison]
    assert "which is gone" in finding.problem
    assert finding.rebuild == (
        f"snakemake --cores all --forcerun {ds.attrs['store_a']} {ds.attrs['store_b']}"
    )


@pytest.mark.parametrize("tree", ["empty", "foreign"])
def test_verify_over_nothing_is_an_error(tmp_path, capsys, tree):
    """A fresh clone's empty results/ or a directory that is no results tree: exit 1, saying
    that nothing was verified, never "all verified"."""
    from robrep.pipeline import cli

    results = tmp_path / "results"
    results.mkdir()
    if tree == "foreign":
        (results / "notes.txt").write_text("not a robrep artefact\n")
        (results / "sub").mkdir()
        (results / "sub" / "data.json").write_text("{}\n")
    assert cli.main(["verify", str(results), "-q"]) == 1
    out = capsys.readouterr()
    assert "no robrep artefacts under" in out.err and "all verified" not in out.out


def test_verify_on_a_fresh_clone_names_the_missing_tree(tmp_path, capsys):
    from robrep.pipeline import cli

    assert cli.main(["verify", str(tmp_path / "results"), "-q"]) == 2
    assert "is not a directory (a results/ tree)" in capsys.readouterr().err


def test_verify_prints_one_rebuild_for_everything_and_notes_a_live_run(tmp_path, capsys):
    """With several damaged artefacts one command forces all of them in one run (one command
    each stopped at the next damaged file, issue 28); a run holding the workflow's lock is
    named, since files it is writing read as damage."""
    from robrep.io.checksums import write_json
    from robrep.pipeline import cli

    results = tmp_path / "wf" / "results"
    paths = [results / "models" / m / "metrics.json" for m in ("a", "b", "c")]
    for path in paths:
        path.parent.mkdir(parents=True)
        write_json({"test": {"clean_acc": 0.9}}, path)
    for path in paths[:2]:
        path.write_text(path.read_text().replace("0.9", "0.8"))
    assert cli.main(["verify", str(results), "-q"]) == 1
    out = capsys.readouterr().out
    assert "3 artefacts" in out and "2 damaged" in out and "NOTE a Snakemake run" not in out
    assert (
        "rebuild all of them in one run: snakemake --cores all --forcerun "
        "results/models/a/metrics.json results/models/b/metrics.json"
    ) in out
    locks = tmp_path / "wf" / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    cli.main(["verify", str(results), "-q"])
    assert f"NOTE a Snakemake run holds the lock on {tmp_path / 'wf'}" in capsys.readouterr().out


def test_verify_names_the_missing_outputs_of_the_run_that_wrote_the_tree(completed_run, tmp_path):
    """The run record (results/run.json) says which config wrote the tree, so outputs that are
    not there (a run killed during aggregate, a disk that filled during similarity) are named
    as missing, with the run that builds them; a tree without a record says that it could not
    check (issue 28)."""
    results = tmp_path / "wf" / "results"
    shutil.copytree(completed_run / "results", results, symlinks=True)
    assert (results / "run.json").is_file()
    assert robrep_verify(results).returncode == 0
    comparison = sorted(results.glob("similarity/cross_layer/**/*.nc"))[0]
    comparison.unlink()
    (results / "summary" / "findings.csv").unlink()
    out = robrep_verify(results)
    assert out.returncode == 1, out.stdout
    for path in (comparison, results / "summary" / "findings.csv"):
        assert f"MISSING {path}" in out.stdout, out.stdout
    assert "2 missing" in out.stdout and "damaged" not in out.stdout
    assert "rebuild all of them in one run: snakemake --cores all\n" in out.stdout

    (results / "run.json").unlink()
    unknown = robrep_verify(results)
    assert unknown.returncode == 0, unknown.stdout
    assert "holds no run record" in unknown.stdout and "--configfile" in unknown.stdout


def test_verify_against_a_config_and_a_damaged_record(completed_run, tmp_path):
    """--configfile checks the tree against another config (here one more seed: every output
    of seed 1 is missing, and the rebuild command carries the file); a run record edited by
    hand is damage, named with its fix."""
    results = tmp_path / "wf" / "results"
    shutil.copytree(completed_run / "results", results, symlinks=True)
    config = tmp_path / "two-seeds.yaml"
    config.write_text(yaml.safe_dump({**TINY, "seeds": [0, 1]}))
    robrep = [sys.executable, "-m", "robrep.pipeline.cli", "verify", str(results)]
    out = subprocess.run([*robrep, "--configfile", str(config)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "MISSING " + str(results / "models/digits/convnet/standard/seed1/metrics.json") in (
        out.stdout
    )
    assert f"snakemake --cores all --configfile {config}" in out.stdout
    missing_seed0 = [
        line for line in out.stdout.splitlines() if line.startswith("MISSING") and "seed0" in line
    ]
    assert all("seed1" in line for line in missing_seed0), missing_seed0  # pairs across seeds

    record = results / "run.json"
    record.write_text(record.read_text().replace('"workflow_dir": "', '"workflow_dir": "/moved'))
    damaged = robrep_verify(results)
    assert damaged.returncode == 1
    assert f"DAMAGED {record}" in damaged.stdout and "fails its SHA-256" in damaged.stdout


def test_verify_reports_unreadable_paths_as_permissions(
    completed_run, tmp_path, monkeypatch, capsys
):
    """A file or directory this user may not read is UNREADABLE with a permissions fix, not
    damage with a rebuild; a directory that cannot be listed is named, not skipped (every glob
    skips it silently). Simulated: the tests run as root, whom chmod 000 does not stop."""
    import os

    from robrep.pipeline import cli, verify

    results = tmp_path / "wf" / "results"
    shutil.copytree(completed_run / "results", results, symlinks=True)
    probes = results / "probes"
    metrics = sorted(results.glob("models/**/metrics.json"))[0]
    scandir, read_text = os.scandir, type(metrics).read_text

    def guarded_scandir(path="."):
        if os.fspath(path) == str(probes):
            raise PermissionError(13, "Permission denied", str(probes))
        return scandir(path)

    def guarded_read_text(self, *args, **kwargs):
        if self == metrics:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    monkeypatch.setattr(type(metrics), "read_text", guarded_read_text)
    _, findings = verify.verify_results(results, progress=False)
    unreadable = {f.path: f for f in findings if f.status == verify.UNREADABLE}
    assert set(unreadable) == {probes, metrics}, findings
    assert "Permission denied" in unreadable[metrics].problem
    assert "permission" in unreadable[probes].rebuild
    assert cli.main(["verify", str(results), "-q"]) == 1
    out = capsys.readouterr().out
    assert f"UNREADABLE {metrics}" in out and "fix: give this user read" in out
    assert "2 unreadable" in out and "damaged" not in out
