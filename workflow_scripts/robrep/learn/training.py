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

from robrep.ids import saved_epochs
from robrep.io.atomic import atomic_output
from robrep.io.checksums import write_json
from robrep.io.weights import save_weights
from robrep.learn.attacks import AttackSpec, pgd, pgd_in_microbatches
from robrep.learn.data import Splits, to_float
from robrep.learn.models import ProbedNet, build_model
from robrep.runtime import software_versions


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no model is written."""


PRECISIONS = ("fp32", "bf16")  # training.precision


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
    precision: str = "fp32"
    channels_last: bool = False
    deterministic: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"training.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )

    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def checkpoint_epochs(self) -> list[int]:
        return saved_epochs(self.epochs, self.checkpoint_every)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, stream) only."""
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def set_determinism(seed: int, threads: int | None, deterministic: bool = True) -> None:
    """Seed torch; `deterministic` asks for deterministic kernels (bitwise on the CPU, where
    nothing else is used) and no cuDNN autotuning, otherwise cuDNN picks the fastest kernels
    (`training.deterministic`). `threads` sets torch's thread count."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = not deterministic


def autocast(settings: TrainSettings, device: torch.device):
    """The training step's autocast: bf16 under `training.precision: bf16` (no loss scaling:
    bf16 has float32's exponent range), otherwise a no-op."""
    return torch.autocast(device.type, torch.bfloat16, enabled=settings.precision == "bf16")


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, drawn from the CPU `generator` and
    applied as one gather on `x`'s device (the same images as cropping one by one)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    ys = (dy[:, None] + torch.arange(h)).to(x.device)  # (n, h) source rows
    cols = torch.arange(w)
    xs = (dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)).to(x.device)  # (n, w)
    rows = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[rows, channels, ys[:, None, :, None], xs[:, None, None, :]]


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
    microbatch: int | None = None,
) -> tuple[float, float]:
    """(clean accuracy, PGD robust accuracy) on arrays `x`, `y`, `batch_size` examples per
    attack batch (its random start drawn at once), run on the device `microbatch` rows at a time
    (default: whole batches), which does not change the accuracies."""
    model.eval()
    rows = microbatch or batch_size
    correct = torch.zeros(2, dtype=torch.int64, device=device)  # clean, robust
    for s in batches(len(y), batch_size):
        xb, yb = to_float(x[s]), torch.as_tensor(y[s])
        xa = pgd_in_microbatches(model, xb, yb, spec, generator, rows, device)
        with torch.no_grad():
            for m in batches(len(yb), rows):
                target = yb[m].to(device)
                correct[0] += (model(xb[m].to(device)).argmax(1) == target).sum()
                correct[1] += (model(xa[m].to(device)).argmax(1) == target).sum()
    clean, robust = correct.tolist()
    return clean / len(y), robust / len(y)


SCHEDULES = ("cosine", "step", "constant")  # training.schedule


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "cosine":
        fn = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))  # noqa: E731
    elif schedule == "step":
        fn = lambda step: 0.1 ** sum(step >= total_steps * m for m in (0.5, 0.75))  # noqa: E731
    elif schedule == "constant":
        fn = lambda step: 1.0  # noqa: E731
    else:
        raise ValueError(f"training.schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def batch_loss(model, xb, yb, method, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss and the logits used for train accuracy, per method."""
    kind = method["method"]
    if kind == "standard":
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits
    spec = AttackSpec.from_method(method)
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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


@dataclass
class _Run:
    """The mutable state of one training run: what the resume state saves and restores."""

    model: ProbedNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "val_robust_acc": -1.0, "val_clean_acc": -1.0}
    )
    epoch: int = 0  # last finished epoch

    @classmethod
    def start(cls, settings: TrainSettings, splits: Splits, device: torch.device) -> _Run:
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
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        steps_per_epoch = math.ceil(len(splits.y_train) / settings.batch_size)
        sched = make_scheduler(opt, settings.schedule, settings.epochs * steps_per_epoch)
        return cls(model, opt, sched)

    def state(self, digest: str) -> dict[str, Any]:
        return {
            "digest": digest,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def resume(self, work: Path, digest: str) -> None:
        """Continue after the last finished epoch of `work/state.pt` if it was written for the
        same settings; otherwise start afresh in an emptied `work`."""
        state_path = work / "state.pt"
        if state_path.exists():
            state = torch.load(state_path, weights_only=True, map_location="cpu")
            if state.get("digest") == digest:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.history, self.best, self.epoch = (
                    state["history"],
                    state["best"],
                    state["epoch"],
                )
                print(f"resuming after epoch {self.epoch} from {state_path}", file=sys.stderr)
                return
            print(f"ignoring {state_path}: written for other settings", file=sys.stderr)
            shutil.rmtree(work)
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)


CHECK_EVERY = 50  # batches between reading the non-finite flag and the running sums back


def _stop_if_diverged(first_bad: int, epoch: int, run: _Run, settings: TrainSettings) -> None:
    """Raise `TrainingDiverged` naming the first batch whose loss was NaN or infinite."""
    if first_bad >= 0:
        raise TrainingDiverged(
            f"loss is nan or inf at epoch {epoch}, batch {first_bad} (lr "
            f"{run.scheduler.get_last_lr()[0]:.4g}); lower training.lr or check the data"
        )


def _train_epoch(
    run: _Run,
    settings: TrainSettings,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One epoch of SGD; all randomness from (seed, epoch). Returns train loss and accuracy."""
    gen = epoch_generator(settings.seed, epoch)
    order = torch.randperm(len(y_train), generator=gen)
    run.model.train()
    bar = tqdm(
        list(batches(len(order), settings.batch_size)),
        desc=f"epoch {epoch}/{settings.epochs}",
        file=sys.stderr,
        mininterval=5,
        leave=True,
    )
    # The loss and accuracy sums stay on the device (float64: the same sums as Python floats),
    # and the non-finite check is read back every CHECK_EVERY batches: no host sync per step.
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x examples, correct
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite batch
    seen = 0
    for b, s in enumerate(bar):
        idx = order[s].to(x_train.device)
        xb = to_float(x_train[idx])
        if settings.augment:
            xb = augment_batch(xb, gen)
        xb, yb = xb.to(device), y_train[idx].to(device)
        if settings.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(settings, device):
            loss, logits = batch_loss(run.model, xb, yb, settings.method, gen)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), b, first_bad)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        sums[0] += loss.detach().double() * len(idx)
        sums[1] += (logits.argmax(1) == yb).sum()
        seen += len(idx)
        if (b + 1) % CHECK_EVERY == 0 or b + 1 == len(bar):
            _stop_if_diverged(int(first_bad), epoch, run, settings)
            total_loss, correct = sums.tolist()
            bar.set_postfix(
                loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False
            )
    bar.close()
    return {"train_loss": total_loss / seen, "train_acc": correct / seen}


def _save_epoch(run: _Run, settings: TrainSettings, splits: Splits, work: Path) -> None:
    """The epoch's checkpoint (if saved), the best weights (if better) and the resume state."""
    epoch = run.epoch
    row = run.history[-1]
    meta = model_metadata(settings, splits, epoch)
    if epoch in settings.checkpoint_epochs():
        save_weights(run.model, work / "checkpoints" / f"epoch{epoch}.safetensors", meta)
    # Best by validation robust accuracy, ties broken by clean accuracy (never the test set).
    val = (row["val_robust_acc"], row["val_clean_acc"])
    if val > (run.best["val_robust_acc"], run.best["val_clean_acc"]):
        run.best = {"epoch": epoch, "val_robust_acc": val[0], "val_clean_acc": val[1]}
        save_weights(run.model, work / "best.safetensors", meta)
    _save_state(work / "state.pt", run.state(settings.digest()))


def train(
    settings: TrainSettings,
    splits: Splits,
    out_dir: str | Path,
    device: torch.device,
    threads: int | None = None,
    stop_after_epoch: int | None = None,
    eval_microbatch: int | None = None,
    resident_data: bool = False,
) -> dict[str, Any]:
    """Train one model into `out_dir` (model.safetensors, best.safetensors, checkpoints/, metrics.json).

    Resumes from `out_dir/.partial/state.pt` when its settings digest matches. `stop_after_epoch`
    exits after that epoch's state is saved (used by tests to simulate a kill at a known point).
    `eval_microbatch`: rows of each validation and test pass on the device (default: whole
    `eval_batch_size` batches); it does not change the accuracies. `resident_data`: the training
    split lives on `device` (copied once, batches gathered there), not in host memory.
    """
    out_dir = Path(out_dir)
    work = out_dir / ".partial"
    set_determinism(settings.seed, threads, settings.deterministic)
    run = _Run.start(settings, splits, device)
    run.resume(work, settings.digest())
    val_spec = AttackSpec.from_evaluation(settings.evaluation, "val_steps")
    data_device = device if resident_data else torch.device("cpu")
    x_train = torch.as_tensor(splits.x_train).to(data_device)
    y_train = torch.as_tensor(splits.y_train).to(data_device)
    for epoch in range(run.epoch + 1, settings.epochs + 1):
        row = {"epoch": epoch, **_train_epoch(run, settings, x_train, y_train, epoch, device)}
        val_clean, val_robust = evaluate(
            run.model,
            splits.x_val,
            splits.y_val,
            val_spec,
            device,
            settings.eval_batch_size,
            epoch_generator(settings.seed, epoch, 1),
            eval_microbatch,
        )
        row.update(
            val_clean_acc=val_clean, val_robust_acc=val_robust, lr=run.scheduler.get_last_lr()[0]
        )
        run.history.append(row)
        run.epoch = epoch
        print(json.dumps(row), file=sys.stderr)
        _save_epoch(run, settings, splits, work)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < settings.epochs:
            return {"stopped_after_epoch": epoch}
    return _finish(
        settings, splits, out_dir, work, run.model, run.history, run.best, device, eval_microbatch
    )


def _finish(
    settings, splits, out_dir, work, model, history, best, device, eval_microbatch
) -> dict[str, Any]:
    """Test final and best weights, then move every output into place (metrics.json last)."""
    from robrep.learn.loading import load_model

    test_spec = AttackSpec.from_evaluation(settings.evaluation, "steps")
    gen = epoch_generator(settings.seed, settings.epochs + 1, 2)
    clean, robust = evaluate(
        model,
        splits.x_test,
        splits.y_test,
        test_spec,
        device,
        settings.eval_batch_size,
        gen,
        eval_microbatch,
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
        eval_microbatch,
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
    write_json(metrics, out_dir / "metrics.json")
    shutil.rmtree(work)
    return metrics
