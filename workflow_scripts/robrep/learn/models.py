"""Model zoo: every network normalises inside itself and exposes its ordered probe layers.

Inputs are pixels in [0, 1]; a `Normalize` module first maps them with the dataset's mean/std, so
attacks and epsilons live in pixel space everywhere. No ReLU is in-place, so nothing later
overwrites a hooked activation; in robrep's own networks every ReLU is its own module, and a
foreign network's reused module is probed per call (`LayerHooks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from robrep.learn.architectures import architecture_entry

# `{module}@{k}`: the k-th call, in one forward pass, of a module that runs several times.
CALL = "@"
PROBE_TYPES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
)


def call_layer(module: str, call: int) -> str:
    """The probe-layer name of the `call`-th call (from 1) of a reused `module`."""
    return f"{module}{CALL}{call}"


def split_layer(layer: str) -> tuple[str, int | None]:
    """Inverse of `call_layer`: (module name, call) or (layer, None) for a module called once."""
    module, sep, call = layer.rpartition(CALL)
    return (module, int(call)) if sep and call.isdigit() else (layer, None)


class LayerHooks:
    """Forward hooks calling `fn(layer, output)` as each probe layer fires: a module's output, or
    for `{module}@{k}` its k-th call's in the pass. A module probed by its bare name that fires
    twice in one pass is refused: its outputs cannot be told apart. Only passes between
    `start()` and `stop()` are seen."""

    def __init__(
        self, model: nn.Module, layers: Sequence[str], fn: Callable[[str, torch.Tensor], None]
    ):
        modules = dict(model.named_modules())
        wanted: dict[str, dict[int | None, str]] = {}
        for layer in layers:
            module, call = split_layer(layer)
            wanted.setdefault(module, {})[call] = layer
        self.calls: Counter[str] = Counter()
        self.recording = False
        self.handles = [
            modules[module].register_forward_hook(self._hook(module, by_call, fn))
            for module, by_call in wanted.items()
        ]

    def _hook(self, module: str, by_call: dict[int | None, str], fn):
        def hook(_module, _args, output):
            if not self.recording:
                return
            self.calls[module] += 1
            call = self.calls[module]
            if None in by_call:
                if call > 1:
                    raise RuntimeError(
                        f"layer {module!r} fired twice in one forward pass: the module is reused "
                        f"(as torchvision ResNet's block ReLU); probe its calls, "
                        f"{call_layer(module, 1)}, {call_layer(module, 2)}, ..."
                    )
                fn(by_call[None], output)
            elif call in by_call:
                fn(by_call[call], output)

        return hook

    def start(self) -> None:
        """See the next forward pass (calls counted from 1)."""
        self.calls = Counter()
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@contextmanager
def inplace_relus(model: nn.Module) -> Iterator[None]:
    """Every `nn.ReLU` of `model` in place while the block runs (as the released code's networks
    are), then as before."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    was = [m.inplace for m in relus]
    for m in relus:
        m.inplace = True
    try:
        yield
    finally:
        for m, inplace in zip(relus, was, strict=True):
            m.inplace = inplace


class Normalize(nn.Module):
    """(x - mean) / std with per-channel buffers saved alongside the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Head(nn.Module):
    """Global average pool -> `penultimate` features -> `logits`."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.penultimate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.logits = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.penultimate(x))


class ProbedNet(nn.Module):
    """Base class: `normalize`, a body of named blocks, `head`; `block_names` in network order.
    `checkpoint_prefix`: what a foreign checkpoint's keys lack (a wrapped network's `net.`)."""

    block_names: list[str]
    checkpoint_prefix: str = ""

    def layer_order(self) -> list[str]:
        """Every module's name in forward order (robrep's networks register their modules in
        the order they run); a foreign network traces it (`ForeignNet.fired`)."""
        return [name for name, _ in self.named_modules() if name]

    def probe_layers(self, which: str | Sequence[str] = "blocks") -> list[str]:
        """Ordered probe layer names: ``"blocks"``, ``"all"`` or an explicit list (validated)."""
        order = self.layer_order()
        modules = dict(self.named_modules())
        every = [
            name
            for name in order
            if isinstance(modules[split_layer(name)[0]], PROBE_TYPES)
            and not name.startswith("normalize")
        ]
        if which == "blocks":
            return list(self.block_names)
        if which == "all":
            return every
        if isinstance(which, str):
            raise ValueError(f"layers: {which!r} is not 'blocks', 'all' or a list of layer names")
        for name in which:
            calls = [n for n in order if split_layer(n)[0] == name and n != name]
            if calls:
                raise ValueError(
                    f"layer {name!r} runs {len(calls)} times per forward pass (a reused module): "
                    f"name one call, {', '.join(calls)}"
                )
        valid = list(dict.fromkeys(self.block_names + every))
        unknown = [name for name in which if name not in valid]
        if unknown:
            raise ValueError(
                f"unknown layer name(s) {unknown} for {type(self).__name__}; valid: {', '.join(valid)}"
            )
        position = {name: i for i, name in enumerate(order)}
        return sorted(which, key=position.__getitem__)


class ConvNet(ProbedNet):
    """Small VGG-style net: three stages of two conv-BN-ReLU, max-pool between stages."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 1):
        super().__init__()
        c = 16 * width
        self.normalize = Normalize(mean, std)
        self.stage1 = nn.Sequential(conv_bn_relu(in_channels, c), conv_bn_relu(c, c))
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = nn.Sequential(conv_bn_relu(c, 2 * c), conv_bn_relu(2 * c, 2 * c))
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = nn.Sequential(conv_bn_relu(2 * c, 4 * c), conv_bn_relu(4 * c, 4 * c))
        self.head = Head(4 * c, num_classes)
        self.block_names = [
            "stage1.0",
            "stage1.1",
            "stage2.0",
            "stage2.1",
            "stage3.0",
            "stage3.1",
            "head.penultimate",
            "head.logits",
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.pool1(self.stage1(x))
        x = self.pool2(self.stage2(x))
        return self.head(self.stage3(x))


class BasicBlock(nn.Module):
    """Post-activation ResNet block (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b); used by PreAct ResNet and Wide ResNet."""

    shortcut_name = "shortcut"  # the projection shortcut's module name (None when not needed)

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        needed = stride != 1 or cin != cout
        setattr(
            self,
            self.shortcut_name,
            nn.Conv2d(cin, cout, 1, stride, bias=False) if needed else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        project = getattr(self, self.shortcut_name)
        shortcut = project(out) if project is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


def make_stage(block: type[nn.Module], cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    layers = []
    for i in range(n):
        layers.append(block(cin if i == 0 else cout, cout, stride if i == 0 else 1))
    return nn.Sequential(*layers)


class ResNet(ProbedNet):
    """CIFAR ResNet-18 (3x3 stem, no max-pool); `preact=True` gives PreAct ResNet-18."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, preact: bool = False):
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        self.normalize = Normalize(mean, std)
        if preact:
            self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        else:
            self.stem = conv_bn_relu(in_channels, 64)
        widths = [64, 128, 256, 512]
        cin = 64
        names = ["stem"]
        for i, width in enumerate(widths, start=1):
            setattr(self, f"layer{i}", make_stage(block, cin, width, 2, 1 if i == 1 else 2))
            names += [f"layer{i}.0", f"layer{i}.1"]
            cin = width
        self.final = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU()) if preact else nn.Identity()
        self.head = Head(512, num_classes)
        self.block_names = (
            names
            + (["final"] if preact else [])
            + [
                "head.penultimate",
                "head.logits",
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.final(x))


class WideResNet(ProbedNet):
    """WRN-depth-width (Zagoruyko & Komodakis 2016): (depth - 4) / 6 pre-act blocks per stage."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, depth: int, width: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        names = ["stem"]
        cin = 16
        for i, w in enumerate(widths, start=1):
            setattr(self, f"stage{i}", make_stage(PreActBlock, cin, w, n, 1 if i == 1 else 2))
            names += [f"stage{i}.{j}" for j in range(n)]
            cin = w
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.head = Head(cin, num_classes)
        self.block_names = names + ["final", "head.penultimate", "head.logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(self.final(x))


class ReleaseBlock(PreActBlock):
    """The released code's WRN block (`models/wide_resnet.py` of Cianfarani et al. 2022): the
    same pre-activation block, with its shortcut under the release's name, `convShortcut`."""

    shortcut_name = "convShortcut"


class ReleaseWideResNet(ProbedNet):
    """WRN-depth-width with the released code's state-dict keys (conv1, block{1,2,3}.layer.{i},
    bn1, relu, avgpool, fc), so its checkpoints (`cifar10_wrn_28_4_{nonrobust,robust_linf}_last
    .pth.tar`, keys prefixed `module.`) load after stripping the prefix. The release normalises
    nothing inside the model (its data are [0, 1] pixels): `normalize` is the identity unless the
    import says otherwise."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, depth: int, width: int):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        names = ["conv1"]
        for i in range(3):
            blocks = [
                ReleaseBlock(channels[i] if j == 0 else channels[i + 1], channels[i + 1], s)
                for j, s in enumerate([1 if i == 0 else 2] + [1] * (n - 1))
            ]
            stage = nn.Module()
            stage.layer = nn.Sequential(*blocks)
            setattr(self, f"block{i + 1}", stage)
            names += [f"block{i + 1}.layer.{j}" for j in range(n)]
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the release's AvgPool2d(8) on 32 px inputs
        self.fc = nn.Linear(channels[3], num_classes)
        self.block_names = names + ["relu", "avgpool", "fc"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        for stage in (self.block1, self.block2, self.block3):
            x = stage.layer(x)
        return self.fc(self.avgpool(self.relu(self.bn1(x))).flatten(1))


class ForeignNet(ProbedNet):
    """A network built elsewhere (torchvision, RobustBench) as `net` behind `normalize`; its
    state-dict keys are `net`'s own under `net.`. In-place ReLUs are switched off, so a hook's
    output is never overwritten later. Probe layers follow the order in which modules fire
    (traced on one example); a module that fires more than once per forward pass (torchvision
    ResNet's block ReLU) is probed per call, `{name}@{k}` for its k-th call."""

    checkpoint_prefix = "net."

    def __init__(self, in_channels: int, mean, std, net: nn.Module):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        for module in self.net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.in_channels = in_channels
        self._fired: list[str] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def fired(self) -> list[str]:
        """Every module of `net` as it fires in one forward pass of a 32 x 32 example, a reused
        module's calls as `{name}@{k}`."""
        if self._fired is None:
            order: list[str] = []
            hooks = [
                module.register_forward_hook(lambda m, a, o, n=name: order.append(n))
                for name, module in self.net.named_modules(prefix="net")
                if name != "net"
            ]
            was = self.training
            device = next(self.parameters()).device
            try:
                with torch.no_grad():
                    self.eval()(torch.zeros(1, self.in_channels, 32, 32, device=device))
            finally:
                self.train(was)
                for h in hooks:
                    h.remove()
            counts = Counter(order)
            seen: Counter[str] = Counter()
            self._fired = []
            for name in order:
                seen[name] += 1
                self._fired.append(call_layer(name, seen[name]) if counts[name] > 1 else name)
        return self._fired

    @property
    def block_names(self) -> list[str]:  # type: ignore[override]
        children = {f"net.{child}" for child, _ in self.net.named_children()}
        return [n for n in self.fired() if split_layer(n)[0] in children]

    def layer_order(self) -> list[str]:
        return self.fired()


class TorchvisionNet(ForeignNet):
    """A torchvision classifier, `torchvision.models.get_model(name, weights=None)`."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, name: str):
        from torchvision import models as tv

        super().__init__(
            in_channels, mean, std, tv.get_model(name, weights=None, num_classes=num_classes)
        )


class RobustBenchNet(ForeignNet):
    """A RobustBench zoo model (`robustbench_zoo`): `name` for `threat` on the CIFAR dataset with
    `num_classes` classes. Its weights come from the import (`robustbench_zoo.load`)."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, threat: str, name: str):
        from robrep.learn import robustbench_zoo

        if in_channels != 3:
            raise ValueError(f"RobustBench models take 3-channel images, not {in_channels}")
        super().__init__(in_channels, mean, std, robustbench_zoo.build(name, threat, num_classes))
        self.threat, self.zoo_name = threat, name


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(ProbedNet):
    """VGG-16 with batch norm, CIFAR variant (no 4096-wide classifier); blocks are the pools."""

    def __init__(self, in_channels: int, num_classes: int, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        names = []
        cin = in_channels
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                names.append(f"features.{len(layers) - 1}")
            else:
                layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                cin = item
        self.features = nn.Sequential(*layers)
        self.head = Head(512, num_classes)
        self.block_names = ["features.2"] + names + ["head.penultimate", "head.logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ProbedNet:
    """Build architecture `name` (see `learn.architectures.REGISTRY`) for the given input
    channels and classes."""
    arch, match = architecture_entry(name)
    network = globals()[arch.network]
    return network(
        in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, **arch.options(match)
    )
