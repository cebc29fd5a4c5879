"""Standard, PGD adversarial (Madry) and TRADES training with atomic per-epoch resume state.

All randomness derives from (seed, epoch): init from `seed`, and each epoch's data order,
augmentation and attack starts from a generator seeded with (seed, epoch). A run killed mid-way
and restarted from the last saved epoch therefore ends with the same weights as an uninterrupted
run. Work in progress lives in `work_dir`; finished files are moved into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .attacks import AttackSpec, pgd
from .config import saved_epochs
from .data import Splits, to_float
from .models import ProbedNet, build_model
from .weights import atomic_path, save_weights


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no model is written."""


@dataclass
class TrainSettings:
    """Everything that determines a trained model (hashed to guard resume state)."""

    dataset: str
    arch: str
    method: dict[str, Any]
    seed: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    checkpoint_every: int
    augment: bool
    evaluation: dict[str, Any]
    eval_batch_size: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def checkpoint_epochs(self) -> list[int]:
        return saved_epochs(self.epochs, self.checkpoint_every)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, stream) only."""
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def set_determinism(seed: int, threads: int | None) -> None:
    """Seed torch and make CPU kernels deterministic; `threads` sets torch's thread count."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` uses CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(requested)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, drawn from `generator`."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def attack_spec(method: dict[str, Any]) -> AttackSpec:
    return AttackSpec(method["norm"], method["eps"], method["steps"], method["step_size"])


def evaluation_spec(evaluation: dict[str, Any], steps_key: str = "steps") -> AttackSpec:
    steps = int(evaluation[steps_key])
    eps = float(evaluation["eps"])
    step_size = evaluation.get("step_size") or 2.5 * eps / max(steps, 1)
    return AttackSpec(evaluation["norm"], eps, steps, float(step_size))


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def evaluate(
    model: ProbedNet,
    x: np.ndarray,
    y: np.ndarray,
    spec: AttackSpec,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """(clean accuracy, PGD robust accuracy) on arrays `x`, `y`."""
    model.eval()
    clean = robust = 0
    for s in batches(len(y), batch_size):
        xb, yb = to_float(x[s]).to(device), torch.as_tensor(y[s]).to(device)
        with torch.no_grad():
            clean += (model(xb).argmax(1) == yb).sum().item()
        xa = pgd(model, xb, yb, spec, generator)
        with torch.no_grad():
            robust += (model(xa).argmax(1) == yb).sum().item()
    return clean / len(y), robust / len(y)


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "cosine":
        fn = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))  # noqa: E731
    elif schedule == "step":
        fn = lambda step: 0.1 ** sum(step >= total_steps * m for m in (0.5, 0.75))  # noqa: E731
    elif schedule == "constant":
        fn = lambda step: 1.0  # noqa: E731
    else:
        raise ValueError(f"training.schedule: {schedule!r} is not one of cosine, step, constant")
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def batch_loss(model, xb, yb, method, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss and the logits used for train accuracy, per method."""
    kind = method["method"]
    if kind == "standard":
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits
    spec = attack_spec(method)
    if kind == "pgd":
        xa = pgd(model, xb, yb, spec, generator)
        logits = model(xa)
        return F.cross_entropy(logits, yb), logits
    if kind == "trades":
        xa = pgd(model, xb, yb, spec, generator, loss="kl")
        logits = model(xb)
        robust_logits = model(xa)
        kl = F.kl_div(
            F.log_softmax(robust_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, yb) + method["beta"] * kl, logits
    raise ValueError(f"method {kind!r} is not one of standard, pgd, trades")


def model_metadata(settings: TrainSettings, splits: Splits, epoch: int) -> dict[str, Any]:
    return {
        "arch": settings.arch,
        "dataset": settings.dataset,
        "method": settings.method,
        "seed": settings.seed,
        "epoch": epoch,
        "in_channels": int(splits.shape[0]),
        "image_size": list(splits.shape[1:]),
        "num_classes": len(splits.classes),
        "mean": splits.mean,
        "std": splits.std,
        "settings_digest": settings.digest(),
        "versions": software_versions(),
    }


def software_versions() -> dict[str, str]:
    import robrep

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "robrep": robrep.__version__,
    }


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = atomic_path(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    settings: TrainSettings,
    splits: Splits,
    out_dir: str | Path,
    device: torch.device,
    threads: int | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train one model into `out_dir` (model.safetensors, best.safetensors, checkpoints/, metrics.json).

    Resumes from `out_dir/.partial/state.pt` when its settings digest matches. `stop_after_epoch`
    exits after that epoch's state is saved (used by tests to simulate a kill at a known point).
    """
    out_dir = Path(out_dir)
    work = out_dir / ".partial"
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"
    set_determinism(settings.seed, threads)
    model = build_model(
        settings.arch, splits.shape[0], len(splits.classes), splits.mean, splits.std
    ).to(device)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
    )
    steps_per_epoch = math.ceil(len(splits.y_train) / settings.batch_size)
    sched = make_scheduler(opt, settings.schedule, settings.epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_robust_acc": -1.0, "val_clean_acc": -1.0}
    start = 1
    if state_path.exists():
        state = torch.load(state_path, weights_only=True, map_location="cpu")
        if state.get("digest") == settings.digest():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, best, start = state["history"], state["best"], state["epoch"] + 1
            print(f"resuming after epoch {state['epoch']} from {state_path}", file=sys.stderr)
        else:
            print(f"ignoring {state_path}: written for other settings", file=sys.stderr)
            shutil.rmtree(work)
            (work / "checkpoints").mkdir(parents=True)
    val_spec = evaluation_spec(settings.evaluation, "val_steps")
    x_train = torch.as_tensor(splits.x_train)
    y_train = torch.as_tensor(splits.y_train)
    for epoch in range(start, settings.epochs + 1):
        gen = epoch_generator(settings.seed, epoch)
        order = torch.randperm(len(y_train), generator=gen)
        model.train()
        total_loss = correct = seen = 0.0
        bar = tqdm(
            list(batches(len(order), settings.batch_size)),
            desc=f"epoch {epoch}/{settings.epochs}",
            file=sys.stderr,
            mininterval=5,
            leave=True,
        )
        for s in bar:
            idx = order[s]
            xb = to_float(x_train[idx])
            if settings.augment:
                xb = augment_batch(xb, gen)
            xb, yb = xb.to(device), y_train[idx].to(device)
            loss, logits = batch_loss(model, xb, yb, settings.method, gen)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch}, batch {s.start // settings.batch_size}"
                    f" (lr {sched.get_last_lr()[0]:.4g}); lower training.lr or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
            bar.set_postfix(
                loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False
            )
        bar.close()
        val_clean, val_robust = evaluate(
            model,
            splits.x_val,
            splits.y_val,
            val_spec,
            device,
            settings.eval_batch_size,
            epoch_generator(settings.seed, epoch, 1),
        )
        row = {
            "epoch": epoch,
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_clean_acc": val_clean,
            "val_robust_acc": val_robust,
            "lr": sched.get_last_lr()[0],
        }
        history.append(row)
        print(json.dumps(row), file=sys.stderr)
        meta = model_metadata(settings, splits, epoch)
        if epoch in settings.checkpoint_epochs():
            save_weights(model, work / "checkpoints" / f"epoch{epoch}.safetensors", meta)
        # Best by validation robust accuracy, ties broken by clean accuracy (never the test set).
        if (val_robust, val_clean) > (best["val_robust_acc"], best["val_clean_acc"]):
            best = {"epoch": epoch, "val_robust_acc": val_robust, "val_clean_acc": val_clean}
            save_weights(model, work / "best.safetensors", meta)
        _save_state(
            state_path,
            {
                "digest": settings.digest(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
                "best": best,
            },
        )
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < settings.epochs:
            return {"stopped_after_epoch": epoch}
    return _finish(settings, splits, out_dir, work, model, history, best, device)


def _finish(settings, splits, out_dir, work, model, history, best, device) -> dict[str, Any]:
    """Test final and best weights, then move every output into place (metrics.json last)."""
    from .weights import load_model

    test_spec = evaluation_spec(settings.evaluation, "steps")
    gen = epoch_generator(settings.seed, settings.epochs + 1, 2)
    clean, robust = evaluate(
        model, splits.x_test, splits.y_test, test_spec, device, settings.eval_batch_size, gen
    )
    best_model, _ = load_model(work / "best.safetensors", device)
    best_clean, best_robust = evaluate(
        best_model,
        splits.x_test,
        splits.y_test,
        test_spec,
        device,
        settings.eval_batch_size,
        epoch_generator(settings.seed, settings.epochs + 1, 2),
    )
    save_weights(
        model, out_dir / "model.safetensors", model_metadata(settings, splits, settings.epochs)
    )
    os.replace(work / "best.safetensors", out_dir / "best.safetensors")
    (out_dir / "checkpoints").mkdir(exist_ok=True)
    for e in settings.checkpoint_epochs():
        name = f"epoch{e}.safetensors"
        os.replace(work / "checkpoints" / name, out_dir / "checkpoints" / name)
    metrics = {
        "model": {
            "dataset": settings.dataset,
            "arch": settings.arch,
            "method": settings.method,
            "seed": settings.seed,
        },
        "history": history,
        "best": best,
        "test": {
            "clean_acc": clean,
            "robust_acc": robust,
            "attack": test_spec.as_dict(),
            "split": "test",
        },
        "test_best": {"clean_acc": best_clean, "robust_acc": best_robust, "epoch": best["epoch"]},
        "versions": software_versions(),
    }
    tmp = atomic_path(out_dir / "metrics.json")
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / "metrics.json")
    shutil.rmtree(work)
    return metrics
