"""External models: checkpoints in their real on-disk formats read safely into an architecture,
with clear refusals for pickled objects, wrong keys and wrong shapes."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from robrep.learn.external import CheckpointError, import_external, import_model, read_state_dict
from robrep.learn.models import build_model

from helpers.external import RB_ARCH, RB_NAME, robustbench_checkpoint, robustbench_or_skip

MEAN, STD = [0.5], [0.25]


def entry(path, arch="convnet", **kw):
    return {
        "name": "ext",
        "dataset": "digits",
        "arch": arch,
        "checkpoint": str(path),
        "method": {"method": "pgd", "norm": "linf", "eps": 0.1, "id": "pgd-linf-eps0.1"},
        **kw,
    }


def source_model(arch="convnet", channels=1, mean=MEAN, std=STD, seed=0):
    """A model with non-trivial weights and batch-norm statistics, as a user's checkpoint holds."""
    torch.manual_seed(seed)
    model = build_model(arch, channels, 10, mean, std)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, channels, 32 if arch.startswith("torchvision") else 8, 8))
    return model.eval()


def foreign_state(model):
    """The state dict a foreign training script saves: no robrep normalize buffers."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}


def same_outputs(a, b, channels=1, size=8):
    x = torch.rand(6, channels, size, size)
    with torch.no_grad():
        np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), rtol=1e-5, atol=1e-6)


def test_torch_state_dict_with_given_normalize(tmp_path):
    model = source_model()
    torch.save(foreign_state(model), tmp_path / "w.pt")
    got, mean, std = import_model(
        entry(tmp_path / "w.pt", normalize={"mean": MEAN, "std": STD}), 1, 10
    )
    assert (mean, std) == (MEAN, STD)
    same_outputs(got, model)


def test_release_style_pth_tar_with_module_prefix_and_epoch(tmp_path):
    """The paper's release: {'state_dict': {'module.' + key: tensor}, 'epoch': ...}, no
    normalisation inside the model ([0, 1] pixels)."""
    model = source_model("release-wrn-10-1", 3, [0.0] * 3, [1.0] * 3)
    state = {f"module.{k}": v for k, v in foreign_state(model).items()}
    torch.save({"state_dict": state, "epoch": 200}, tmp_path / "ckpt.pth.tar")
    got, mean, std = import_model(entry(tmp_path / "ckpt.pth.tar", "release-wrn-10-1"), 3, 10)
    assert mean == [0.0] * 3 and std == [1.0] * 3
    same_outputs(got, model, channels=3)


def test_release_wrn_keys_are_the_released_codes():
    """The key names of the released `models/wide_resnet.py` (WideResNet(depth, widen_factor)):
    conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}, bn1, fc."""

    def bn(name):
        return [f"{name}.{p}" for p in ("weight", "bias", "running_mean", "running_var")] + [
            f"{name}.num_batches_tracked"
        ]

    want = ["conv1.weight"]
    n, width = 4, 4  # WRN-28-4: (28 - 4) / 6 blocks per stage
    channels = [16, 16 * width, 32 * width, 64 * width]
    for stage in range(3):
        for i in range(n):
            block = f"block{stage + 1}.layer.{i}"
            want += bn(f"{block}.bn1") + [f"{block}.conv1.weight"]
            want += bn(f"{block}.bn2") + [f"{block}.conv2.weight"]
            if i == 0 and channels[stage] != channels[stage + 1]:
                want.append(f"{block}.convShortcut.weight")
    want += bn("bn1") + ["fc.weight", "fc.bias"]
    model = build_model("release-wrn-28-4", 3, 10, [0.0] * 3, [1.0] * 3)
    assert sorted(foreign_state(model)) == sorted(want)
    assert model.state_dict()["fc.weight"].shape == (10, 256)


def test_safetensors_checkpoint(tmp_path):
    model = source_model()
    save_file(foreign_state(model), str(tmp_path / "w.safetensors"))
    got, _, _ = import_model(
        entry(
            tmp_path / "w.safetensors", format="safetensors", normalize={"mean": MEAN, "std": STD}
        ),
        1,
        10,
    )
    same_outputs(got, model)


def test_robrep_weights_carry_their_own_normalize(tmp_path):
    model = source_model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    got, mean, std = import_model(entry(tmp_path / "w.pt"), 1, 10)
    assert mean == pytest.approx(MEAN) and std == pytest.approx(STD)
    same_outputs(got, model)
    with pytest.raises(CheckpointError, match="carries its own normalize.mean/std"):
        import_model(entry(tmp_path / "w.pt", normalize={"mean": [0], "std": [1]}), 1, 10)


def test_torchvision_state_dict(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    got, _, _ = import_model(entry(tmp_path / "resnet18.pth", "torchvision-resnet18"), 3, 10)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(got(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)
    assert not any(m.inplace for m in got.modules() if isinstance(m, torch.nn.ReLU))


def test_reused_modules_are_probed_per_call():
    """torchvision ResNet's block ReLU runs twice per block: `all` probes each call, in the order
    the layers fire, and each call's output is its own (never the later one's)."""
    from robrep.store.extract import LayerRecorder

    model = source_model("torchvision-resnet18", channels=3)
    layers = model.probe_layers("all")
    block = [n for n in layers if n.startswith("net.layer1.0.")]
    assert block == [
        "net.layer1.0.conv1",
        "net.layer1.0.bn1",
        "net.layer1.0.relu@1",
        "net.layer1.0.conv2",
        "net.layer1.0.bn2",
        "net.layer1.0.relu@2",
    ]
    assert len(layers) == len(set(layers)) == 60  # 21 convs, 20 BNs, 17 ReLU calls, pools, fc
    recorder = LayerRecorder(model, layers)
    out = recorder.record(model, torch.rand(3, 3, 32, 32))
    recorder.remove()
    torch.testing.assert_close(out["net.layer1.0.relu@1"], out["net.layer1.0.bn1"].clamp(min=0))
    torch.testing.assert_close(
        out["net.layer1.0.relu@2"], (out["net.layer1.0.bn2"] + out["net.maxpool"]).clamp(min=0)
    )
    # A list names calls; the bare name of a reused module is refused, naming its calls.
    assert model.probe_layers(["net.layer1.0.relu@2", "net.conv1"]) == [
        "net.conv1",
        "net.layer1.0.relu@2",
    ]
    with pytest.raises(
        ValueError, match=r"runs 2 times .*net.layer1.0.relu@1, net.layer1.0.relu@2"
    ):
        model.probe_layers(["net.layer1.0.relu"])
    bare = LayerRecorder(model, ["net.layer1.0.relu"])
    with pytest.raises(RuntimeError, match=r"fired twice in one forward pass.*relu@1"):
        bare.record(model, torch.rand(1, 3, 32, 32))


def test_pickled_objects_are_refused_with_how_to_convert(tmp_path):
    model = source_model()
    args = argparse.Namespace(arch="convnet", lr=0.1)  # what training scripts often save
    torch.save({"state_dict": foreign_state(model), "args": args}, tmp_path / "ckpt.pth.tar")
    with pytest.raises(
        CheckpointError,
        match=r"pickled Python objects.*never unpickles.*torch said: .*GLOBAL argparse.Namespace",
    ):
        read_state_dict(tmp_path / "ckpt.pth.tar", "torch")


def test_damaged_checkpoints_are_named_damaged_not_pickled(tmp_path):
    """Bytes torch cannot read (random, or a file cut short) are a damaged checkpoint: never
    reported as a file holding objects to convert."""
    rng = np.random.default_rng(0)
    (tmp_path / "noise.pt").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=r"noise.pt is not a torch file, or is damaged"):
        read_state_dict(tmp_path / "noise.pt", "torch")
    torch.save(foreign_state(source_model()), tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt is not a torch file"):
        read_state_dict(tmp_path / "cut.pt", "torch")


def test_wrong_keys_and_shapes_are_named(tmp_path):
    state = foreign_state(source_model())
    state.pop("head.logits.bias")
    state["head.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['head.logits.bias'\].*unexpected "):
        import_model(entry(tmp_path / "keys.pt"), 1, 10)
    wide = foreign_state(source_model("convnet-2"))
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"wrong shapes \(stage1.0.0.weight: checkpoint"):
        import_model(entry(tmp_path / "wide.pt"), 1, 10)
    # A DataParallel checkpoint read without stripping: every key is unexpected.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    with pytest.raises(CheckpointError, match="key prefix to strip"):
        import_model(entry(tmp_path / "dp.pt", strip_prefix=""), 1, 10)
    with pytest.raises(CheckpointError, match=r"has no entry 'model' \(state_dict_key\)"):
        read_state_dict(tmp_path / "keys.pt", "torch", "model")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    """A checkpoint with NaN weights was imported, evaluated and AutoAttacked (issue 28)."""
    state = foreign_state(source_model())
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=rf"non-finite values \(NaN or inf\) in \[.{name}"):
        import_model(entry(tmp_path / "nan.pt"), 1, 10)


def test_imported_models_accuracy_matches_a_direct_forward(tmp_path):
    from robrep.learn.data import Splits
    from robrep.learn.loading import load_model

    model = source_model()
    torch.save(foreign_state(model), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    splits = Splits(x, y, x, y, x, y, classes=[str(c) for c in range(10)], mean=MEAN, std=STD)
    evaluation = {"norm": "linf", "eps": 0.1, "steps": 2}
    spec = entry(tmp_path / "w.pt", normalize={"mean": MEAN, "std": STD})
    metrics = import_external(spec, splits, tmp_path / "out", evaluation, 16)
    with torch.no_grad():
        direct = (model(torch.from_numpy(x).float() / 255).argmax(1).numpy() == y).mean()
    assert metrics["test"]["clean_acc"] == pytest.approx(direct)
    assert metrics["test"]["robust_acc"] <= metrics["test"]["clean_acc"]
    assert metrics["external"]["name"] == "ext" and len(metrics["external"]["sha256"]) == 64
    loaded, meta = load_model(tmp_path / "out" / "model.safetensors")
    assert meta["method"]["id"] == "pgd-linf-eps0.1" and meta["external"]["name"] == "ext"
    same_outputs(loaded, model)


@pytest.mark.slow
def test_robustbench_layout_directory_loads_as_robustbench_does(tmp_path, monkeypatch):
    """A RobustBench model_dir: the import equals RobustBench's own loader on the same directory
    and a direct forward of the saved model, probes every Conv/BN/ReLU/Linear module, and never
    downloads."""
    robustbench_or_skip()
    import robustbench.utils

    def no_download(*args, **kwargs):
        raise AssertionError("robustbench tried to download")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", no_download)
    reference, path = robustbench_checkpoint(tmp_path / "models")
    spec = {**entry(path, RB_ARCH), "dataset": "cifar10"}
    got, mean, std = import_model(spec, 3, 10)
    assert mean == [0.0] * 3 and std == [1.0] * 3
    theirs = robustbench.utils.load_model(
        RB_NAME, model_dir=tmp_path / "models", dataset="cifar10", threat_model="Linf"
    )
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x), theirs(x), rtol=0, atol=0)
        torch.testing.assert_close(got(x), reference(x), rtol=1e-5, atol=1e-5)
    layers = got.probe_layers("all")
    assert len(layers) == 79 and layers[0] == "net.conv1" and layers[-1] == "net.fc"
    assert got.probe_layers("blocks")[1:4] == ["net.block1", "net.block2", "net.block3"]
    # The saved weights rebuild through the registry, as extraction reads them.
    rebuilt = build_model(RB_ARCH, 3, 10, mean, std).eval()
    rebuilt.load_state_dict(got.state_dict())
    same_outputs(rebuilt, reference, channels=3, size=32)


def test_robustbench_entries_are_checked(tmp_path):
    robustbench_or_skip()
    from robrep.pipeline.config import ConfigError, check_external_models

    _, path = robustbench_checkpoint(tmp_path / "models")
    good = {
        "name": "ding",
        "dataset": "cifar10",
        "arch": RB_ARCH,
        "checkpoint": str(path),
        "method": {"method": "pgd", "norm": "linf", "eps": "8/255"},
    }

    def refused(pattern, datasets=("cifar10",), **changes):
        config = {"datasets": list(datasets), "external_models": [{**good, **changes}]}
        with pytest.raises(ConfigError, match=pattern):
            check_external_models(config)

    check_external_models({"datasets": ["cifar10"], "external_models": [good]})
    refused(
        r"has no cifar10 Linf model 'Ding2020'; e\.g\. Ding2020MMA",
        arch="robustbench-linf-Ding2020",
    )
    refused(r"norm is linf, not l2", method={"method": "pgd", "norm": "l2", "eps": 0.5})
    refused(r"here are cifar10, cifar100, not digits", datasets=["digits"], dataset="digits")
    (tmp_path / "flat.pt").write_bytes(path.read_bytes())
    refused(
        r"not in RobustBench's layout: .*\{model_dir\}/cifar10/Linf/Ding2020MMA\.pt",
        checkpoint=str(tmp_path / "flat.pt"),
    )
    refused(
        r"timm model, read from the Hugging Face Hub",
        arch="robustbench-linf-Debenedetti2022Light_XCiT-S12",
    )
    refused(r"an ensemble of checkpoints", arch="robustbench-linf-Chen2020Adversarial")


def test_robustbench_checkpoint_with_pickled_objects_is_refused(tmp_path):
    robustbench_or_skip()
    _, path = robustbench_checkpoint(tmp_path / "models")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, path)
    spec = {**entry(path, RB_ARCH), "dataset": "cifar10"}
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        import_model(spec, 3, 10)
    # Wrong weights for the architecture: RobustBench's loader names the keys.
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(
        CheckpointError, match=r"does not load into RobustBench's Ding2020MMA.*Missing key"
    ):
        import_model(spec, 3, 10)
