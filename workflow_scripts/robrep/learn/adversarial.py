"""Adversarial examples as data: a model's evaluation-attack images, made once and stored.

One Zarr v3 store per model x checkpoint (`ids.adversarial_path`) holds the PGD versions
(Madry et al. 2018, `attacks.pgd`) of the evaluation subset of the test split: `images`
(float32 in [0, 1], N x C x H x W), `sample_ids` and `labels`, and as attributes the attack
settings, the seed and the source model. Every store that shows a model adversarial inputs reads
them from here: the model's own `pgd` store and every other model's `transfer-{source}` store,
so no PGD run is repeated and transfer inputs are exactly the source's images. Chunks carry
CRC32C checksums; the store is written under a temporary name and appears only when complete.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from robrep.io.atomic import atomic_output
from robrep.io.checksums import (
    DamagedArtefactError,
    rebuild_command,
    sign_attrs,
    verified_attrs,
)
from robrep.io.zarrio import checked_read, chunk_codecs
from robrep.learn.attacks import AttackSpec, pgd_in_microbatches
from robrep.learn.data import to_float

COMPLETE = "robrep_complete"
FORMAT = "robrep.adversarial/1"


class IncompleteAdversarialError(RuntimeError):
    """The adversarial store was not finished (killed attack) and must be rebuilt."""


def craft(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    attack: AttackSpec,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    microbatch: int | None = None,
) -> np.ndarray:
    """PGD versions of `images` (float32, in stored order), attacked `batch_size` at a time; each
    batch's random start is seeded by `seed` and the batch's first row, so the images depend only
    on the model, the examples, the attack, the seed and the batch size. On the device a batch
    runs `microbatch` rows at a time (default: whole), which does not change the images."""
    from tqdm import tqdm

    model = model.to(device).eval()
    n = len(images)
    out = np.empty((n, *images.shape[1:]), np.float32)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="attack", file=sys.stderr, disable=not progress):
        stop = min(start + batch_size, n)
        x, y = to_float(images[start:stop]), torch.as_tensor(labels[start:stop])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        rows = microbatch or batch_size
        out[start:stop] = pgd_in_microbatches(model, x, y, attack, gen, rows, device).numpy()
    return out


def write_adversarial(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    sample_ids: np.ndarray,
    attack: AttackSpec,
    seed: int,
    batch_size: int,
    attrs: dict[str, Any],
) -> Path:
    """Store crafted `images` with their ids, labels and attack settings; complete or absent."""
    path = Path(path)
    if not (len(images) == len(labels) == len(sample_ids)):
        raise ValueError(
            f"{len(images)} images, {len(labels)} labels, {len(sample_ids)} sample ids differ"
        )
    with atomic_output(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array(
            "images",
            data=np.asarray(images, np.float32),
            chunks=(min(batch_size, max(len(images), 1)), *images.shape[1:]),
            dimension_names=("sample", "channel", "height", "width"),
            compressors=chunk_codecs("zstd"),
        )
        for name, values in (("sample_ids", sample_ids), ("labels", labels)):
            group.create_array(
                name,
                data=np.asarray(values, np.int64),
                dimension_names=("sample",),
                compressors=chunk_codecs("zstd"),
            )
        group.attrs.update(
            {
                **attrs,
                "format": FORMAT,
                "attack": attack.as_dict(),
                "attack_seed": seed,
                "attack_batch_size": batch_size,
                "n_examples": len(images),
                COMPLETE: True,
            }
        )
        sign_attrs(group.attrs)
    return path


@dataclass(frozen=True)
class AdversarialExamples:
    """A complete adversarial store read back and verified."""

    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    attrs: dict[str, Any]

    def matching(self, sample_ids: np.ndarray, labels: np.ndarray, path: str | Path) -> np.ndarray:
        """The images, after checking they are of exactly these examples, in this order."""
        if not np.array_equal(self.sample_ids, sample_ids) or not np.array_equal(
            self.labels, labels
        ):
            raise ValueError(
                f"adversarial examples {path} are of other examples ({len(self.sample_ids)} "
                f"from the test split) than this extraction's {len(sample_ids)} (another "
                f"activations.n_examples or split_seed?); rebuild them: {rebuild_command(path)}"
            )
        return self.images


def read_adversarial(path: str | Path) -> AdversarialExamples:
    """A complete adversarial store, every chunk checksum-verified and every value finite and in
    [0, 1]; damage raises `DamagedArtefactError` naming the store and how to rebuild it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adversarial examples {path} do not exist")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get(COMPLETE) is not True or attrs.get("format") != FORMAT:
        raise IncompleteAdversarialError(
            f"adversarial examples {path} are incomplete or of another format "
            f"({attrs.get('format')!r}, this robrep reads {FORMAT!r}); rebuild them: "
            f"{rebuild_command(path)}"
        )
    attrs = verified_attrs(group.attrs, path)
    arrays = {}
    for name in ("images", "sample_ids", "labels"):
        if name not in group:
            raise DamagedArtefactError(
                f"adversarial examples {path} lack their array {name!r} (deleted or damaged); "
                f"rebuild them: {rebuild_command(path)}"
            )
        read = lambda a=group[name]: a[:]  # noqa: E731
        arrays[name] = checked_read(path, name, "all chunks", read, "adversarial examples")
    images = arrays["images"]
    if images.size and (images.min() < 0 or images.max() > 1):
        raise DamagedArtefactError(
            f"adversarial examples {path} hold values outside [0, 1], which the attack never "
            f"stores (damaged); rebuild them: {rebuild_command(path)}"
        )
    return AdversarialExamples(images, arrays["labels"], arrays["sample_ids"], attrs)
