"""Activation stores: exact values, aligned sample ids, atomic completion, flat memory, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from robrep.store.extract import extract_to_store
from robrep.store.format import IncompleteStoreError, MismatchedStoresError, StoreLayout
from robrep.store.read import ActivationStore, check_aligned

from helpers.stores import extract, images


def test_values_equal_direct_forward(tiny_model, tmp_path):
    path = extract(tiny_model, tmp_path / "benign.zarr")
    store = ActivationStore(path)
    modules = dict(tiny_model.named_modules())
    want = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda m, a, o, n=name: want.__setitem__(n, o.detach().clone())
        )
        for name in store.layers
    ]
    with torch.no_grad():
        tiny_model(torch.from_numpy(images(50)))
    for h in hooks:
        h.remove()
    for name in store.layers:
        got = store.layer(name)[:]
        np.testing.assert_array_equal(got, want[name].reshape(50, -1).numpy())
        assert store.layer(name).chunks[0] == 16
    np.testing.assert_array_equal(store.sample_ids, np.arange(100, 150))
    assert store.attrs["layer_shapes"]["stage1.0"] == [16, 8, 8]
    # Hooks are removed after extraction.
    assert all(not m._forward_hooks for m in tiny_model.modules())


def test_opens_with_zarr_and_xarray(tiny_model, tmp_path):
    path = extract(tiny_model, tmp_path / "benign.zarr")
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["layers"][0] == "stage1.0"
    ds = xr.open_zarr(path, consolidated=False)
    assert ds["stage1.0"].dims == ("sample", "stage1.0.feature")
    assert ds.sizes["sample"] == 50


def test_incomplete_store_is_not_trusted(tiny_model, tmp_path):
    path = extract(tiny_model, tmp_path / "s.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["robrep_complete"] = False
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        ActivationStore(path)


@pytest.mark.slow
def test_killed_extraction_leaves_nothing_that_looks_finished(tmp_path):
    """SIGKILL an extraction mid-way: the final path never appears; a rerun completes it."""
    script = textwrap.dedent(
        f"""
        import numpy as np, torch, os, signal
        from robrep.learn.models import build_model
        from robrep.store import extract as st
        torch.manual_seed(0)
        model = build_model("convnet", 1, 10, [0.3], [0.3]).eval()
        real = st.LayerRecorder.record
        calls = []
        def record(self, m, x):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, m, x)
        st.LayerRecorder.record = record
        x = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
        st.extract_to_store(model, x, np.zeros(200, int), np.arange(200), {str(tmp_path / "s.zarr")!r},
                            model.probe_layers("blocks"), {{}}, st.StoreLayout(16),
                            progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not (tmp_path / "s.zarr").exists()
    assert (tmp_path / ".s.zarr.partial").exists()
    with pytest.raises(FileNotFoundError):
        ActivationStore(tmp_path / "s.zarr")
    torch.manual_seed(0)
    from robrep.learn.models import build_model

    model = build_model("convnet", 1, 10, [0.3], [0.3]).eval()
    x = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    extract_to_store(
        model,
        x,
        np.zeros(200, int),
        np.arange(200),
        tmp_path / "s.zarr",
        model.probe_layers("blocks"),
        {},
        StoreLayout(chunk_rows=16),
        progress=False,
    )
    assert ActivationStore(tmp_path / "s.zarr").attrs["robrep_complete"] is True
    assert not (tmp_path / ".s.zarr.partial").exists()


def test_mismatched_stores_name_both(tiny_model, tmp_path):
    a = ActivationStore(extract(tiny_model, tmp_path / "a.zarr"))
    b = ActivationStore(extract(tiny_model, tmp_path / "b.zarr", ids=np.arange(50)))
    check_aligned([a, a])
    with pytest.raises(MismatchedStoresError, match=r"a\.zarr.*b\.zarr"):
        check_aligned([a, b])


def test_unknown_layer_names(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['stage9'\]"):
        tiny_model.probe_layers(["stage9"])
    store = ActivationStore(extract(tiny_model, tmp_path / "s.zarr"))
    with pytest.raises(KeyError, match="'nope' not in .*layers: stage1.0"):
        store.layer("nope")


def test_options_dtype_pool_split_features(tiny_model, tmp_path):
    store = ActivationStore(
        extract(
            tiny_model,
            tmp_path / "s.zarr",
            dtype="float16",
            pool=4,
            max_chunk_features=100,
            compressor="blosc",
        )
    )
    arr = store.layer("stage1.0")
    assert arr.dtype == np.float16 and arr.shape == (50, 16 * 4 * 4) and arr.chunks == (16, 100)
    rows = [sl for sl, _ in store.iter_chunks(["stage1.0", "head.logits"])]
    assert rows[0] == slice(0, 16) and rows[-1] == slice(48, 50)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_read_rows_fills_the_callers_buffer(tiny_model, tmp_path, dtype):
    """The read API the similarity engine uses: rows (slice or index array) into a given buffer."""
    layer = ActivationStore(extract(tiny_model, tmp_path / "s.zarr", dtype=dtype)).layer("stage1.0")
    whole = layer[:].astype(np.float32)
    buffer = np.full((20, whole.shape[1]), np.nan, np.float32)
    assert layer.read_rows(slice(10, 30), buffer) is buffer
    np.testing.assert_array_equal(buffer, whole[10:30])
    rows = np.array([1, 7, 33, 49])
    got = layer.read_rows(rows, buffer[:4])
    assert np.shares_memory(got, buffer)
    np.testing.assert_array_equal(got, whole[rows])


def test_failed_extraction_removes_its_partial_store(tiny_model, tmp_path, monkeypatch):
    """An error mid-way (a full disk, a bad layer) leaves neither the store nor its partial."""
    from robrep.store import extract as st

    calls = []

    def record(self, model, x):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, model, x)

    real = st.LayerRecorder.record
    monkeypatch.setattr(st.LayerRecorder, "record", record)
    with pytest.raises(OSError, match="No space left"):
        extract(tiny_model, tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


PEAK_SCRIPT = """
import resource, sys, numpy as np, torch
from robrep.learn.models import build_model
from robrep.store.extract import extract_to_store
from robrep.store.format import StoreLayout
torch.manual_seed(0)
model = build_model("convnet-2", 1, 10, [0.3], [0.3]).eval()
n = int(sys.argv[1])
x = np.random.default_rng(0).random((n, 1, 16, 16), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
extract_to_store(model, x, np.zeros(n, int), np.arange(n), sys.argv[2], model.probe_layers("blocks"),
                 {}, StoreLayout(64, compressor="none"), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - before) * 1024)
"""


@pytest.mark.slow
def test_memory_flat_as_n_grows(tmp_path):
    """Growth of peak RSS during extraction is about one batch, not proportional to N.

    The inputs themselves (N x 1 x 16 x 16 float32) are allocated before the baseline; the
    activations written (~260 kB per example here) would add ~0.5 GB at 4N if held in memory.
    """
    growth = {}
    for n in (512, 2048):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(n), str(tmp_path / f"s{n}.zarr")],
            capture_output=True,
            text=True,
            check=True,
        )
        growth[n] = int(out.stdout.strip().splitlines()[-1])
    stored = 2048 * 4 * (32 * 16 * 16 * 2 + 64 * 8 * 8 * 2 + 128 * 4 * 4 * 2 + 128 + 10)
    assert growth[2048] - growth[512] < 0.1 * stored, json.dumps(growth)


def test_release_compat_reads_batchnorm_after_its_inplace_relu(tmp_path):
    """`compat: release` gives a BatchNorm followed by its ReLU the ReLU's output (what the
    released code's hooks read); every other layer, and every layer under robrep's default,
    holds the module's own output."""
    from robrep.learn.models import build_model

    torch.manual_seed(0)
    model = build_model("release-wrn-10-1", 1, 10, [0.5], [0.5]).eval()
    for m in model.modules():  # non-trivial BN statistics, so BN outputs have negative values
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    layers = model.probe_layers("all")
    release = ActivationStore(
        extract(model, tmp_path / "release.zarr", layers=layers, compat="release")
    )
    own = ActivationStore(extract(model, tmp_path / "robrep.zarr", layers=layers))
    assert release.attrs["compat"] == "release" and own.attrs["compat"] == "robrep"
    modules = dict(model.named_modules())
    followed = {
        bn: relu
        for bn, relu in zip(layers[:-1], layers[1:], strict=True)
        if isinstance(modules[bn], torch.nn.BatchNorm2d)
        and isinstance(modules[relu], torch.nn.ReLU)
    }
    assert len(followed) == 7  # bn1 and bn2 of each of the 3 blocks, and the final bn1
    for name in layers:
        got, plain = release.layer(name)[:], own.layer(name)[:]
        if name in followed:
            assert plain.min() < 0  # the BN's own output
            np.testing.assert_array_equal(got, own.layer(followed[name])[:])
        else:
            np.testing.assert_array_equal(got, plain)
    # The packed Grams are made from the same values as the features.
    gram_release = zarr.open_group(str(release.path), mode="r")["gram"][:]
    gram_own = zarr.open_group(str(own.path), mode="r")["gram"][:]
    for bn, relu in followed.items():
        np.testing.assert_array_equal(
            gram_release[..., layers.index(bn)], gram_own[..., layers.index(relu)]
        )
    assert all(not m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))


def test_grams_made_on_the_device_match_the_host_path(tiny_model, tmp_path, monkeypatch):
    """The GPU path (`DeviceGrams`: every layer's packed Gram made with torch into one buffer,
    one host copy per batch, non-finite flags read once per batch), run here with torch on the
    CPU, stores the host path's Grams to float32 rounding and the same features; NaN
    activations still stop it naming the layer and the example."""
    import copy

    from robrep.store import extract as extraction
    from robrep.store.format import NonFiniteActivationsError

    # Two passes of batches of 20, 20, 10: both host buffers and a short last batch.
    order = np.stack([np.arange(50), np.random.default_rng(1).permutation(50)])
    kw = {"pass_order": order, "cka_batch_size": 20}
    host = zarr.open_group(str(extract(tiny_model, tmp_path / "host.zarr", **kw)), mode="r")
    monkeypatch.setattr(extraction, "_grams_on_device", lambda device: True)
    made = zarr.open_group(str(extract(tiny_model, tmp_path / "device.zarr", **kw)), mode="r")
    assert made["gram"].shape[0] == 6
    np.testing.assert_allclose(made["gram"][:], host["gram"][:], rtol=2e-5, atol=1e-4)
    for name in host.attrs["feature_layers"]:
        np.testing.assert_array_equal(made[name][:], host[name][:])
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(broken.get_submodule("stage2.0").parameters()).view(-1)[0] = float("nan")
    with pytest.raises(
        NonFiniteActivationsError,
        match=r"layer 'stage2.0' has non-finite activations, first at example 100 \(row 0",
    ):
        extract(broken, tmp_path / "broken.zarr")
