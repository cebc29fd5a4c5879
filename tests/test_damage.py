"""Nothing silently wrong: damaged stores fail their reads naming the store, non-finite activations
are never stored, and no number comes out of damaged data."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import zarr

from robrep.io.checksums import DamagedArtefactError
from robrep.io.zarrio import DamagedStoreError
from robrep.learn.data import pass_orders
from robrep.similarity import minibatch_cka_grams, minibatch_cka_multi
from robrep.store.format import NonFiniteActivationsError
from robrep.store.read import ActivationStore

from helpers.stores import STORE_META, chunk_files, corrupt_middle, images
from helpers.stores import extract as extract_store
from helpers.workflow import TINY, make_workdir, snakemake


def extract(model, path, n=40, **kw):
    meta = {"model_id": "convnet.standard.seed0", "checkpoint": "final", "inputs": "benign"}
    return extract_store(
        model,
        path,
        n,
        meta=meta,
        chunk_rows=16,
        cka_batch_size=16,
        pass_order=pass_orders(n, 2, 0),
        **kw,
    )


@pytest.mark.parametrize("array", ["gram", "stage2.0"])
def test_corrupted_chunk_fails_its_read_naming_store_and_array(tiny_model, tmp_path, array):
    path = extract(tiny_model, tmp_path / "s.zarr")
    corrupt_middle(chunk_files(path / array)[1])
    store = ActivationStore(path)
    with pytest.raises(DamagedStoreError, match=rf"{path}: array '{array}', .* checksum.*forcerun"):
        if array == "gram":
            minibatch_cka_grams([store.grams()], [(0, 0)])
        else:
            minibatch_cka_multi([store.select()], [(0, 0)], batch_size=16)


def test_comparison_of_a_damaged_store_gives_no_number(tiny_model, tmp_path):
    from robrep.study.compare import compare_stores

    path = extract_store(tiny_model, tmp_path / "s.zarr", 40, meta=STORE_META, chunk_rows=16)
    corrupt_middle(chunk_files(path / "gram")[0])
    with pytest.raises(DamagedStoreError, match="checksum"):
        compare_stores(path, path, ["minibatch_cka"])


def test_every_store_array_is_checksummed(tiny_model, tmp_path):
    group = zarr.open_group(str(extract(tiny_model, tmp_path / "s.zarr")), mode="r")
    names = [name for name, _ in group.arrays()]
    assert "gram" in names and "sample_ids" in names
    for name in names:
        codecs = [type(c).__name__ for c in group[name].compressors]
        assert codecs[-1] == "Crc32cCodec", (name, codecs)


def test_deleted_layer_array_is_damage(tiny_model, tmp_path):
    path = extract(tiny_model, tmp_path / "s.zarr")
    shutil.rmtree(path / "stage3.0")
    with pytest.raises(DamagedStoreError, match=rf"{path} lacks its array 'stage3.0'.*forcerun"):
        ActivationStore(path).layer("stage3.0")


def test_non_finite_values_in_a_store_are_damage(tiny_model, tmp_path):
    """NaN written with a valid checksum (by zarr itself) is still refused as damage."""
    path = extract(tiny_model, tmp_path / "s.zarr")
    layer = zarr.open_group(str(path), mode="r+")["stage2.0"]
    block = layer[3:5]
    block[:] = np.nan
    layer[3:5] = block
    with pytest.raises(DamagedStoreError, match="'stage2.0', rows 0-15, holds non-finite"):
        ActivationStore(path).layer("stage2.0")[0:16]


def test_nan_activations_stop_extraction_naming_model_layer_and_example(tiny_model, tmp_path):
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(broken.get_submodule("stage2.0").parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "s.zarr"
    with pytest.raises(
        NonFiniteActivationsError,
        match=r"convnet.standard.seed0, checkpoint final, inputs benign: layer 'stage2.0' has "
        r"non-finite activations, first at example 100 \(row 0",
    ):
        extract(broken, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_failing_rule_script_logs_its_traceback(tmp_path):
    """The rule scripts' log helper writes the traceback into the job's log before re-raising
    (Snakemake shows the log of a failed job; an empty one says nothing)."""
    import importlib.util
    import types
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_log", Path(__file__).parents[1] / "workflow_scripts" / "_log.py"
    )
    log_helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(log_helper)
    log = tmp_path / "job.log"
    with pytest.raises(ValueError, match="weights are damaged"):
        with log_helper.redirect_to_log(types.SimpleNamespace(log=[str(log)], rule="extract")):
            print("starting")
            raise ValueError("weights are damaged")
    text = log.read_text()
    assert "starting" in text and "Traceback" in text and "ValueError: weights are damaged" in text
    # timestamped start and end lines: when the job ran and how long it took (issue 25)
    assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] rule extract started\n", text), text
    assert re.search(r"\] failed after \d+\.\d s\n$", text), text


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_weights_are_refused_naming_the_file(tiny_model, tmp_path, damage):
    from robrep.io.weights import DamagedWeightsError, save_weights
    from robrep.learn.loading import load_model

    meta = {"arch": "convnet", "in_channels": 1, "num_classes": 10, "mean": [0.3], "std": [0.3]}
    path = tmp_path / "model.safetensors"
    save_weights(tiny_model, path, meta)
    load_model(path)  # intact: loads
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[-40] ^= 0xFF  # inside the last tensor's bytes
        path.write_bytes(bytes(data))
        why = "fails its SHA-256 checksum"
    else:
        path.write_bytes(path.read_bytes()[:100])
        why = "cannot be read"
    with pytest.raises(DamagedWeightsError, match=rf"weights {path} {why}.*forcerun {path}"):
        load_model(path)


def test_tampered_weights_metadata_is_refused(tiny_model, tmp_path):
    """One byte of the safetensors header's metadata changed (eps 0.1 -> 0.7, same length): the
    metadata checksum refuses it, where before only the tensors were hashed (issue 28)."""
    from robrep.io.weights import DamagedWeightsError, read_metadata, save_weights

    meta = {"arch": "convnet", "method": {"method": "trades", "eps": 0.1}, "in_channels": 1}
    path = tmp_path / "model.safetensors"
    save_weights(tiny_model, path, meta)
    assert read_metadata(path)["method"]["eps"] == 0.1
    data = path.read_bytes()
    assert data.count(b'"eps\\": 0.1') == 1
    path.write_bytes(data.replace(b'"eps\\": 0.1', b'"eps\\": 0.7'))
    with pytest.raises(DamagedWeightsError, match=rf"{path} fails its metadata checksum.*forcerun"):
        read_metadata(path)


def _edit_attrs(store, old: str, new: str) -> None:
    """Change a Zarr group's attribute in its zarr.json, as an editor (or a flipped byte) would."""
    meta = store / "zarr.json"
    text = meta.read_text()
    assert text.count(old) == 1, (old, text.count(old))
    meta.write_text(text.replace(old, new))


def test_tampered_store_attributes_are_damage(tiny_model, tmp_path):
    """A store's attributes decide a comparison's coordinates (eps, seed, method): an edit of its
    zarr.json is damage, named with the rebuild, not a relabelled comparison (issue 28)."""
    from robrep.study.compare import compare_stores

    meta = {**STORE_META, "seed": 7}
    path = extract_store(tiny_model, tmp_path / "s.zarr", 40, meta=meta, chunk_rows=16)
    ActivationStore(path)  # intact
    _edit_attrs(path, '"seed": 7', '"seed": 9')
    with pytest.raises(DamagedStoreError, match=rf"{path} fails its attribute checksum.*forcerun"):
        compare_stores(path, path, ["minibatch_cka"])
    _edit_attrs(path, '"robrep_attrs_sha256"', '"robrep_attrs_sha25"')
    with pytest.raises(DamagedStoreError, match=rf"{path} has no attribute checksum"):
        ActivationStore(path)


def test_tampered_adversarial_attributes_are_damage(tmp_path):
    from robrep.learn.adversarial import read_adversarial, write_adversarial
    from robrep.learn.attacks import AttackSpec

    spec = AttackSpec(norm="linf", eps=0.1, steps=2, step_size=0.05)
    path = write_adversarial(
        tmp_path / "adv.zarr",
        images(12),
        np.arange(12) % 10,
        np.arange(12),
        spec,
        0,
        4,
        {"model_id": "m"},
    )
    assert read_adversarial(path).attrs["attack"]["eps"] == 0.1
    _edit_attrs(path, '"model_id": "m"', '"model_id": "n"')
    with pytest.raises(DamagedArtefactError, match=rf"{path} fails its attribute checksum"):
        read_adversarial(path)


def test_tampered_netcdf_fails_its_checksum_naming_the_file(tmp_path):
    """Comparison and summary netCDF files carry Fletcher-32 checksums on every numeric array."""
    import xarray as xr

    from robrep.io.xrio import DamagedArtefactError, read_netcdf, write_netcdf

    values = np.random.default_rng(0).random((1, 30, 30))
    ds = xr.Dataset(
        {
            "similarity": (("metric", "a", "b"), values),
            "names": (("a",), [f"l{i}" for i in range(30)]),
        }
    )
    path = tmp_path / "c.nc"
    write_netcdf(ds, path)
    np.testing.assert_array_equal(read_netcdf(path).similarity.values, values)
    data = bytearray(path.read_bytes())
    start = data.find(values.tobytes()[:64])
    assert start > 0
    data[start + 100 : start + 121] = bytes(21)
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedArtefactError, match=rf"{path} .*checksum.*forcerun {path}"):
        read_netcdf(path)


@pytest.mark.parametrize(
    "old, new", [(b"convnet.standard.seed0", b"convnet.standard.seed9"), (b"l17", b"l71")]
)
def test_tampered_netcdf_labels_fail_the_metadata_checksum(tmp_path, old, new):
    """Attributes and string labels, which Fletcher-32 does not cover, carry a SHA-256."""
    import xarray as xr

    from robrep.io.xrio import DamagedArtefactError, read_netcdf, write_netcdf

    ds = xr.Dataset(
        {"similarity": (("a",), np.arange(30.0))},
        coords={"a": [f"l{i}" for i in range(30)]},
        attrs={"model_a": "convnet.standard.seed0", "n_examples": 64},
    )
    path = tmp_path / "c.nc"
    write_netcdf(ds, path)
    back = read_netcdf(path)
    xr.testing.assert_identical(back, ds)
    data = path.read_bytes()
    assert data.count(old) == 1, data.count(old)
    path.write_bytes(data.replace(old, new))
    with pytest.raises(DamagedArtefactError, match=rf"{path} fails its metadata checksum"):
        read_netcdf(path)


def test_netcdf_without_its_metadata_digest_is_damage(tmp_path):
    """A netCDF file robrep did not write (or an older robrep's) is not trusted: its attributes
    would decide coordinates unverified (issue 28)."""
    import xarray as xr

    from robrep.io.xrio import DamagedArtefactError, read_netcdf

    path = tmp_path / "c.nc"
    xr.Dataset({"similarity": (("a",), np.arange(3.0))}, attrs={"eps_a": 0.09}).to_netcdf(
        path, engine="h5netcdf"
    )
    with pytest.raises(
        DamagedArtefactError, match=rf"{path} has no metadata checksum .*rebuild it: .*forcerun"
    ):
        read_netcdf(path)


def test_json_artefacts_carry_and_verify_a_sha256(tmp_path):
    import json

    from robrep.io.checksums import DamagedArtefactError, read_json, write_json

    metrics = {"test": {"clean_acc": 0.9375, "robust_acc": float("nan")}, "seed": 0}
    path = tmp_path / "metrics.json"
    write_json(metrics, path)
    assert "sha256" in json.loads(path.read_text())
    back = read_json(path)
    assert back["seed"] == 0 and back["test"]["clean_acc"] == 0.9375
    path.write_text(path.read_text().replace("0.9375", "0.9376"))
    with pytest.raises(DamagedArtefactError, match=rf"{path} fails its SHA-256.*forcerun {path}"):
        read_json(path)
    path.write_text('{"seed": 0')  # truncated
    with pytest.raises(DamagedArtefactError, match=rf"{path} cannot be read as JSON"):
        read_json(path)
    path.write_text('{"seed": 0}')  # no digest (renamed key, older robrep): damage, not trusted
    with pytest.raises(DamagedArtefactError, match=rf"{path} has no SHA-256 checksum"):
        read_json(path)


def tmpfs_reason_to_skip() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs as results/ needs root"
    if not shutil.which("mount"):
        return "no mount command"
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_full_disk_during_extraction_leaves_no_partial_output(completed_run, tmp_path):
    reason = tmpfs_reason_to_skip()
    if reason:
        pytest.skip(reason)
    (tmp_path / "wf").mkdir()
    workdir = make_workdir(tmp_path / "wf", TINY)
    results = workdir / "results"
    done = completed_run / "results"
    kept = [done / "data", done / "models"]
    # Room for the data and models (in 4 KiB pages, as tmpfs counts) and 1 MiB more: less than
    # the activation stores need.
    need = sum(-(-f.stat().st_size // 4096) * 4096 for d in kept for f in d.rglob("*"))
    stores = sum(f.stat().st_size for f in (done / "activations").rglob("*") if f.is_file())
    assert stores > 2**20, stores
    results.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={need + 2**20}", "tmpfs", str(results)], check=True
    )
    try:
        for d in kept:
            shutil.copytree(d, results / d.name)  # copy2 keeps mtimes: no retraining
        out = snakemake(workdir, "--keep-going", check=False)
        assert out.returncode != 0
        logs = "".join(p.read_text() for p in (results / "logs").rglob("*.log"))
        assert "No space left on device" in logs + out.stderr, out.stderr[-3000:]
        left = [p for p in results.rglob("*") if p.name.endswith(".partial")]
        assert not left, left
        assert not list((results / "models").rglob("*.partial"))
    finally:
        subprocess.run(["umount", str(results)], check=False)


@pytest.mark.integration
def test_a_run_removes_partials_a_crashed_writer_left(completed_run, tmp_path):
    """A writer killed inside a native library (h5py's SIGSEGV on a full disk) leaves its
    `.partial` (issue 28): the next run that starts removes it, naming it."""
    (tmp_path / "wf").mkdir()
    workdir = make_workdir(tmp_path / "wf", TINY)
    shutil.copytree(completed_run / "results", workdir / "results", symlinks=True)
    results = workdir / "results"
    left = next(results.glob("similarity/*/*")) / ".crashed.nc.partial"
    left.write_bytes(b"\x89HDF half")
    (results / "summary" / "findings.csv").unlink()  # something to do: aggregate runs again
    out = snakemake(workdir)
    assert not left.exists()
    assert f"removed {left.relative_to(workdir)}" in out.stderr + out.stdout
