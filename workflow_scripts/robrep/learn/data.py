"""Datasets as pixel tensors in [0, 1] with fixed, seeded, stratified train/val/test splits.

Every loader returns a `Splits` of images (uint8 for image files, float32 for digits) and labels.
`prepare_splits` writes them once per dataset to an `.npz`; training and extraction read that file,
so every model of a dataset sees the same split and the same evaluation examples.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where a function needs it: the workflow reads this module
    import torch

from robrep.io.atomic import atomic_output
from robrep.io.checksums import damaged


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is before it is read: examples shipped (train + test), channels, default
    image size, classes, bytes per stored pixel value and examples in its test split."""

    examples: int
    channels: int
    image_size: int
    classes: int
    pixel_bytes: int
    test_examples: int


DATASET_INFO = {
    "digits": DatasetInfo(1797, 1, 16, 10, 4, 359),  # scikit-learn's bundled digits, resized
    "cifar10": DatasetInfo(60000, 3, 32, 10, 1, 10000),
    "cifar100": DatasetInfo(60000, 3, 32, 100, 1, 10000),
    "imagenette": DatasetInfo(13394, 3, 128, 10, 1, 3925),  # the val/ folder of the 160 px set
    "imagewoof": DatasetInfo(12954, 3, 128, 10, 1, 3929),
}
# Examples per class of scikit-learn's digits: its test split holds round(test_fraction * count)
# of each (see `stratified_split`).
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
DATASETS = tuple(DATASET_INFO)
IMAGEFOLDER_DIRS = {"imagenette": "imagenette2-160", "imagewoof": "imagewoof2-160"}
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
HOW_TO_GET = {
    "cifar10": "set dataset_options.cifar10.download: true, or unpack cifar-10-python.tar.gz there",
    "cifar100": "set dataset_options.cifar100.download: true, or unpack cifar-100-python.tar.gz there",
    "imagenette": "unpack imagenette2-160.tgz (github.com/fastai/imagenette) there",
    "imagewoof": "unpack imagewoof2-160.tgz (github.com/fastai/imagenette) there",
}


def dataset_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options of dataset `name` (config `dataset_options.<name>`) with its defaults filled."""
    if name not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    info = DATASET_INFO[name]
    defaults: dict[str, Any] = {}
    if name == "digits":
        defaults = {"image_size": info.image_size, "channels": info.channels, "test_fraction": 0.2}
    elif name in IMAGEFOLDER_DIRS:
        defaults = {"image_size": info.image_size}
    return {**defaults, **(options or {})}


def input_geometry(name: str, options: dict[str, Any] | None = None) -> tuple[int, int]:
    """(channels, image size) of the images a model of dataset `name` sees."""
    resolved = dataset_options(name, options)
    return resolved.get("channels", DATASET_INFO[name].channels), resolved.get(
        "image_size", DATASET_INFO[name].image_size
    )


def examples_in_test_split(name: str, options: dict[str, Any] | None = None) -> int:
    """Examples in the test split of dataset `name` as `prepare_splits` makes it: what
    `activations.n_examples` can use at most."""
    resolved = dataset_options(name, options)
    if name == "digits":
        return sum(int(round(resolved["test_fraction"] * c)) for c in DIGITS_CLASS_COUNTS)
    return DATASET_INFO[name].test_examples


class DatasetMissingError(FileNotFoundError):
    """The dataset's files are not where the config says; the message says how to get them."""


@dataclass
class Splits:
    """Images (N, C, H, W) and int64 labels for train/val/test, plus normalisation statistics."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: list[float]
    std: list[float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split {name!r} is not one of train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1] (uint8 is divided by 255)."""
    import torch

    t = torch.as_tensor(x)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with `fraction` of every class held out, both sorted."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        held.append(idx[: int(round(fraction * len(idx)))])
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


def load_digits(image_size: int, channels: int, test_fraction: float, seed: int = 0):
    """scikit-learn's bundled 8x8 digits, scaled to [0,1], resized, optionally tiled to 3 channels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        x = x.clamp(0.0, 1.0)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    elif channels != 1:
        raise ValueError(f"dataset_options.digits.channels: {channels!r} must be 1 or 3")
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    x = x.numpy()
    return x[train], y[train], x[test], y[test], [str(i) for i in range(10)]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches allowing only numpy array reconstruction, nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}; refusing to load")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as fh:
        raw = _CifarUnpickler(fh, encoding="latin1").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar(name: str, data_root: str | Path, download: bool = False):
    """CIFAR-10/100 from the python-pickle directory torchvision uses, as uint8 (N, 3, 32, 32)."""
    root = Path(data_root)
    folder = root / CIFAR_DIRS[name]
    if not folder.is_dir() and download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        cls(str(root), train=True, download=True)
    if not folder.is_dir():
        raise DatasetMissingError(
            f"dataset {name!r}: directory {folder} not found; {HOW_TO_GET[name]}"
        )
    if name == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = [folder / "test_batch"], "labels"
        meta, meta_key = folder / "batches.meta", "label_names"
    else:
        train_files, test_files, label_key = [folder / "train"], [folder / "test"], "fine_labels"
        meta, meta_key = folder / "meta", "fine_label_names"
    missing = [str(p) for p in train_files + test_files + [meta] if not p.is_file()]
    if missing:
        raise DatasetMissingError(
            f"dataset {name!r}: missing {', '.join(missing)}; {HOW_TO_GET[name]}"
        )

    def read(files):
        batches = [_read_cifar_batch(p) for p in files]
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        return x.reshape(-1, 3, 32, 32), y

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    names = _read_cifar_batch(meta)[meta_key]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    return x_train, y_train, x_test, y_test, classes


def load_imagefolder(name: str, data_root: str | Path, image_size: int, folder: str | None = None):
    """Imagenette/Imagewoof `train/` and `val/` class folders: resize the short side, centre-crop."""
    from torchvision import datasets, transforms

    root = Path(data_root) / (folder or IMAGEFOLDER_DIRS[name])
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DatasetMissingError(
                f"dataset {name!r}: directory {root / sub} not found; {HOW_TO_GET[name]}"
            )
    tf = transforms.Compose(
        [
            transforms.Resize(round(image_size * 1.14)),
            transforms.CenterCrop(image_size),
            transforms.PILToTensor(),
        ]
    )

    def read(sub):
        ds = datasets.ImageFolder(str(root / sub), transform=tf, loader=_rgb_loader)
        x = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.uint8)
        return x, np.asarray(ds.targets, dtype=np.int64), ds.classes

    x_train, y_train, classes = read("train")
    x_test, y_test, test_classes = read("val")
    if test_classes != classes:
        raise ValueError(f"dataset {name!r}: train and val class folders differ under {root}")
    return x_train, y_train, x_test, y_test, classes


def _rgb_loader(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images in [0, 1] (uint8 is scaled)."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).astype(np.float64) / scale
    return flat.mean(axis=1).tolist(), np.maximum(flat.std(axis=1), 1e-3).tolist()


def load_splits(
    name: str, data_root: str | Path, options: dict[str, Any], val_fraction: float, split_seed: int
) -> Splits:
    """Load dataset `name` and hold out a stratified validation split from its training data."""
    options = dataset_options(name, options)
    if name == "digits":
        raw = load_digits(
            options["image_size"], options["channels"], options["test_fraction"], seed=split_seed
        )
    elif name in CIFAR_DIRS:
        raw = load_cifar(name, data_root, download=options.get("download", False))
    else:
        raw = load_imagefolder(name, data_root, options["image_size"], options.get("folder"))
    x_all, y_all, x_test, y_test, classes = raw
    train, val = stratified_split(y_all, val_fraction, split_seed + 1)
    mean, std = channel_stats(x_all[train])
    return Splits(
        x_all[train], y_all[train], x_all[val], y_all[val], x_test, y_test, classes, mean, std
    )


def save_splits(splits: Splits, path: str | Path) -> None:
    """Write splits to `path` (.npz) atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            **{
                k: getattr(splits, k)
                for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
            },
            classes=np.asarray(splits.classes),
            mean=np.asarray(splits.mean),
            std=np.asarray(splits.std),
        )


def read_splits(path: str | Path) -> Splits:
    """Read splits written by `save_splits` (no pickles: plain arrays only), every member's
    CRC32 verified as the zip format reads it; a damaged or truncated file raises
    `DamagedArtefactError` naming it and its rebuild."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return Splits(
                *(z[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")),
                classes=[str(c) for c in z["classes"]],
                mean=z["mean"].tolist(),
                std=z["std"].tolist(),
            )
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as err:
        raise damaged(
            path, f"cannot be read as the data splits ({type(err).__name__}: {err})"
        ) from err


def evaluation_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A fixed, seeded, sorted subset of `n` indices of an evaluation split (all when n >= len)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(labels), size=n, replace=False))


PASS_STREAM = 0x9A55  # keeps pass permutations apart from other uses of the split seed


def pass_orders(n: int, passes: int, split_seed: int) -> np.ndarray:
    """(passes, n) orders of the evaluation subset for minibatch CKA: pass 0 is the stored order,
    pass p >= 1 a permutation seeded by (split_seed, p) alone, so every model of a dataset (and
    every store of a model) shares them."""
    if passes < 1:
        raise ValueError(f"activations.passes: {passes} must be >= 1")
    orders = [np.arange(n)]
    for p in range(1, passes):
        rng = np.random.default_rng(np.random.SeedSequence([split_seed, PASS_STREAM, p]))
        orders.append(rng.permutation(n))
    return np.stack(orders).astype(np.int64)
