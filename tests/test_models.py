"""Model registry: every architecture builds, normalises inside, and exposes ordered probe layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robrep.learn.architectures import REGISTRY, check_architecture
from robrep.learn.models import build_model

ARCHS = ["convnet", "convnet-2", "resnet18", "preact_resnet18", "wrn-10-1", "wrn-16-2", "vgg16_bn"]


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_and_probes(arch):
    model = build_model(arch, 3, 7, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    blocks = model.probe_layers("blocks")
    every = model.probe_layers("all")
    modules = dict(model.named_modules())
    assert blocks[-1] == "head.logits" and "head.penultimate" in blocks
    assert all(name in modules for name in blocks + every)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus)
    # Every probe fires exactly once per forward pass.
    counts = {name: 0 for name in every + blocks}
    handles = [
        modules[name].register_forward_hook(
            lambda m, a, o, n=name: counts.__setitem__(n, counts[n] + 1)
        )
        for name in counts
    ]
    model(x)
    for h in handles:
        h.remove()
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}


def test_normalisation_is_inside_the_model():
    model = build_model("convnet", 1, 10, [0.5], [0.25])
    x = torch.full((1, 1, 8, 8), 0.75)
    assert torch.allclose(model.normalize(x), torch.full_like(x, 1.0))
    assert "normalize.mean" in model.state_dict()


def test_unknown_names_list_the_registry():
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'; valid: " + REGISTRY[0]):
        check_architecture("resnet50")
    model = build_model("convnet", 1, 10, [0.5], [0.5])
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['nope'\].*valid: stage1.0"):
        model.probe_layers(["nope"])
    assert model.probe_layers(["head.logits", "stage1.0"]) == ["stage1.0", "head.logits"]


def test_families_pair_only_one_network_at_several_sizes():
    """width_depth pairs architectures of one family; a foreign network's family is itself."""
    from robrep.learn.architectures import arch_family

    assert arch_family("wrn-10-1") == arch_family("wrn-28-4") == "wrn"
    assert arch_family("convnet") == arch_family("convnet-2") == "convnet"
    assert arch_family("torchvision-resnet18") == "torchvision-resnet18"
    assert arch_family("torchvision-resnet18") != arch_family("torchvision-vgg16")
