"""Models robrep did not train: published or foreign checkpoints read safely into a registry
architecture, so the rest of the pipeline treats them as its own.

A checkpoint is a safetensors file or a torch file holding a state dict (possibly under a key,
as the paper's release `{"state_dict": ..., "epoch": ...}`), read with
`torch.load(weights_only=True)` only: a file that needs unpickling arbitrary Python objects is
refused. Keys may carry a prefix (`module.` from DataParallel) that is stripped. The state dict
must fit the architecture exactly: missing or unexpected keys and wrong shapes are named.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robrep.io.checksums import write_json
from robrep.io.weights import save_weights
from robrep.learn.architectures import arch_kind
from robrep.learn.attacks import AttackSpec
from robrep.learn.data import Splits
from robrep.learn.models import ProbedNet, build_model
from robrep.runtime import software_versions

FORMATS = ("torch", "safetensors")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes torch puts in its messages
# The input normalisation's buffers: from the checkpoint when it carries them (robrep weights),
# else from the entry's `normalize`.
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely or does not fit its architecture."""


def read_state_dict(
    path: str | Path,
    fmt: str,
    state_dict_key: str | None = None,
    strip_prefix: str | None = "module.",
) -> dict[str, torch.Tensor]:
    """The tensors of checkpoint `path` (`fmt`: torch or safetensors), taken from
    `state_dict_key` when given (or from `state_dict` when the file holds one beside other
    entries), with `strip_prefix` removed from every key that has it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure is the same refusal
            raise CheckpointError(f"checkpoint {path} is not a safetensors file: {err}") from err
    elif fmt == "torch":
        loaded = load_torch_file(path)
    else:
        raise CheckpointError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    state = _select(loaded, state_dict_key, path)
    if strip_prefix:
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    return state


def load_torch_file(path: str | Path) -> Any:
    """What torch file `path` holds, read with `torch.load(weights_only=True)`: tensors and plain
    containers only; a file that needs unpickling Python objects is refused, saying how to
    convert it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        said = re.sub(ANSI, "", str(err)).splitlines()
        detail = next((line for line in said if "WeightsUnpickler error" in line), said[0])
        if "Unsupported global" not in detail:  # not an object it refused: bytes it cannot read
            raise CheckpointError(
                f"checkpoint {path} is not a torch file, or is damaged: {detail.strip()}"
            ) from err
        raise CheckpointError(
            f"checkpoint {path} holds pickled Python objects beyond tensors and plain "
            f"containers, which robrep never unpickles (weights_only loading; loading it "
            f"would run code from the file). Convert it where you trust it: "
            f"`torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')` "
            f"(or save_file(...) to safetensors) and point checkpoint at the result. "
            f"torch said: {detail.strip()}"
        ) from err
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is not a torch file: {err}") from err


def _select(loaded: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict")
    if key is None and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        key = "state_dict"
    if key is not None:
        if key not in loaded:
            raise CheckpointError(
                f"checkpoint {path} has no entry {key!r} (state_dict_key); entries: "
                f"{', '.join(map(str, loaded))}"
            )
        loaded = loaded[key]
    others = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(
            f"checkpoint {path}: entries {others[:5]} are not tensors; name the state dict's "
            f"entry with state_dict_key"
        )
    return dict(loaded)


def load_into(model: ProbedNet, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load `state` (keys as in the checkpoint; the architecture's `checkpoint_prefix` is added)
    into `model`, refusing missing or unexpected keys and mismatched shapes, naming them. The
    model's normalize buffers are loaded from `state` when it has them (robrep's own weights),
    else kept as built. Non-finite weights are refused too."""
    prefix = getattr(model, "checkpoint_prefix", "")
    state = {k if k in NORMALIZE_KEYS else prefix + k: v for k, v in state.items()}
    built = model.state_dict()
    own = {k: v for k, v in built.items() if k not in NORMALIZE_KEYS or k in state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, architecture {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes ({'; '.join(shapes[:5])})")
    non_finite = [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if non_finite:  # NaN weights would be imported, evaluated and AutoAttacked as a model
        problems.append(f"non-finite values (NaN or inf) in {_few(non_finite)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: {', '.join(problems)} "
            f"(another arch, a key prefix to strip, or another state_dict_key?)"
        )
    model.load_state_dict({**built, **state})


def _few(keys: list[str]) -> str:
    return f"{keys[:8]}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def import_model(
    entry: Mapping[str, Any], in_channels: int, num_classes: int
) -> tuple[ProbedNet, list[float], list[float]]:
    """The architecture of an `external_models` entry with its checkpoint's weights (eval
    mode), and the mean/std it normalises inputs with: the entry's `normalize`, or the
    checkpoint's own normalize buffers (robrep weights; the entry must then say none), else
    none (0 and 1). A RobustBench architecture's checkpoint is read by RobustBench's loader
    (`import_robustbench`)."""
    if arch_kind(entry["arch"]) == "robustbench":
        return import_robustbench(entry, in_channels, num_classes)
    state = read_state_dict(
        entry["checkpoint"],
        entry.get("format", "torch"),
        entry.get("state_dict_key"),
        entry.get("strip_prefix", "module."),
    )
    normalize = entry.get("normalize", "none")
    carried = all(k in state for k in NORMALIZE_KEYS)
    if carried and normalize != "none":
        raise CheckpointError(
            f"external model {entry['name']}: checkpoint {entry['checkpoint']} carries its own "
            f"normalize.mean/std; leave normalize at none"
        )
    if carried:
        mean = state["normalize.mean"].flatten().tolist()
        std = state["normalize.std"].flatten().tolist()
    elif normalize == "none":
        mean, std = [0.0] * in_channels, [1.0] * in_channels
    else:
        mean, std = [float(v) for v in normalize["mean"]], [float(v) for v in normalize["std"]]
    if len(mean) != in_channels or len(std) != in_channels:
        raise CheckpointError(
            f"external model {entry['name']}: normalize has {len(mean)} means and {len(std)} "
            f"stds for the dataset's {in_channels}-channel images"
        )
    model = build_model(entry["arch"], in_channels, num_classes, mean, std)
    load_into(model, state, entry["checkpoint"])
    return model.eval(), mean, std


def import_robustbench(
    entry: Mapping[str, Any], in_channels: int, num_classes: int
) -> tuple[ProbedNet, list[float], list[float]]:
    """A RobustBench zoo model with its checkpoint's weights, as RobustBench's own loader reads
    them (its key rules and per-model exceptions), once the file has passed the weights-only
    read; no normalisation outside it (the zoo's models take [0, 1] pixels)."""
    from robrep.learn import robustbench_zoo

    if entry.get("normalize", "none") != "none":
        raise CheckpointError(
            f"external model {entry['name']}: RobustBench models normalise inside themselves; "
            f"leave normalize at none"
        )
    if entry.get("format", "torch") != "torch":
        raise CheckpointError(
            f"external model {entry['name']}: RobustBench checkpoints are torch files (format: "
            f"torch)"
        )
    load_torch_file(entry["checkpoint"])  # refuses pickled objects before robustbench reads it
    mean, std = [0.0] * in_channels, [1.0] * in_channels
    model = build_model(entry["arch"], in_channels, num_classes, mean, std)
    try:
        loaded = robustbench_zoo.load(
            model.zoo_name, model.threat, num_classes, entry["checkpoint"]
        )
    except (RuntimeError, ValueError, KeyError) as err:
        said = " ".join(str(err).split())  # torch lists every key on tab-indented lines
        raise CheckpointError(
            f"checkpoint {entry['checkpoint']} does not load into RobustBench's "
            f"{model.zoo_name}: {said[:800]}{' ...' if len(said) > 800 else ''}"
        ) from err
    load_into(model, loaded.state_dict(), entry["checkpoint"])
    return model.eval(), mean, std


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_external(
    entry: Mapping[str, Any],
    splits: Splits,
    out_dir: str | Path,
    evaluation: Mapping[str, Any],
    eval_batch_size: int,
    device: str | torch.device = "cpu",
    eval_microbatch: int | None = None,
) -> dict[str, Any]:
    """Import an `external_models` entry (resolved, `pipeline.config.external_models`): load and check
    its checkpoint, test it like a trained model (clean and evaluation-PGD accuracy on the test
    split, `eval_microbatch` rows at a time on the device), and write `model.safetensors` and
    `metrics.json` (last) to `out_dir`, as training does. The checkpoint's SHA-256 is recorded
    with both."""
    from robrep.learn.training import epoch_generator, evaluate

    out_dir = Path(out_dir)
    model, mean, std = import_model(entry, int(splits.shape[0]), len(splits.classes))
    model = model.to(device)
    spec = AttackSpec.from_evaluation(evaluation, "steps")
    seed = int(entry.get("seed", 0))
    clean, robust = evaluate(
        model,
        splits.x_test,
        splits.y_test,
        spec,
        torch.device(device),
        eval_batch_size,
        epoch_generator(seed, 0, 2),
        eval_microbatch,
    )
    source = {
        "name": entry["name"],
        "checkpoint": str(entry["checkpoint"]),
        "format": entry.get("format", "torch"),
        "sha256": file_sha256(entry["checkpoint"]),
    }
    meta = {
        "arch": entry["arch"],
        "dataset": entry["dataset"],
        "method": dict(entry["method"]),
        "seed": seed,
        "epoch": 0,  # unknown: the weights were not trained here
        "in_channels": int(splits.shape[0]),
        "image_size": list(splits.shape[1:]),
        "num_classes": len(splits.classes),
        "mean": mean,
        "std": std,
        "external": source,
        "versions": software_versions(),
    }
    save_weights(model, out_dir / "model.safetensors", meta)
    metrics = {
        "model": {
            "dataset": entry["dataset"],
            "arch": entry["arch"],
            "method": dict(entry["method"]),
            "seed": seed,
        },
        "external": source,
        "history": [],
        "best": {"epoch": None, "val_robust_acc": None},
        "test": {
            "clean_acc": clean,
            "robust_acc": robust,
            "attack": spec.as_dict(),
            "split": "test",
        },
        "versions": software_versions(),
    }
    write_json(metrics, out_dir / "metrics.json")
    return metrics
