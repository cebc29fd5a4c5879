"""Adversarial examples as data: crafted once within the attack's bound, stored exactly, read
back verified, and fed unchanged to every store that sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from robrep.io.checksums import DamagedArtefactError
from robrep.learn.adversarial import (
    IncompleteAdversarialError,
    craft,
    read_adversarial,
    write_adversarial,
)
from robrep.learn.attacks import AttackSpec
from robrep.store.read import ActivationStore

from helpers.stores import extract, images

SPEC = AttackSpec("linf", 0.1, 3, 0.05)
LABELS = np.arange(40) % 10
IDS = np.arange(100, 140)


def crafted(model, seed=1, batch_size=16):
    return craft(model, images(40), LABELS, SPEC, seed, batch_size, progress=False)


def stored(model, path, **kw):
    return write_adversarial(path, crafted(model), LABELS, IDS, SPEC, 1, 16, {"source": "m"})


def test_crafted_images_respect_the_bound_and_are_reproducible(tiny_model):
    x = crafted(tiny_model)
    clean = images(40)
    assert x.dtype == np.float32 and x.shape == clean.shape
    assert np.abs(x - clean).max() <= SPEC.eps + 1e-6
    assert x.min() >= 0 and x.max() <= 1
    assert not np.array_equal(x, clean)
    np.testing.assert_array_equal(x, crafted(tiny_model))  # same seed, same images
    assert not np.array_equal(x, crafted(tiny_model, seed=2))
    # The attack lowers the model's accuracy on the labels it was given.
    with torch.no_grad():
        acc = lambda v: (tiny_model(torch.from_numpy(v)).argmax(1).numpy() == LABELS).mean()  # noqa: E731
    assert acc(x) <= acc(clean)


def test_stored_examples_read_back_exactly(tiny_model, tmp_path):
    path = stored(tiny_model, tmp_path / "adv.zarr")
    back = read_adversarial(path)
    np.testing.assert_array_equal(back.images, crafted(tiny_model))
    np.testing.assert_array_equal(back.sample_ids, IDS)
    np.testing.assert_array_equal(back.labels, LABELS)
    assert back.attrs["attack"] == SPEC.as_dict() and back.attrs["attack_seed"] == 1
    assert back.attrs["source"] == "m"
    np.testing.assert_array_equal(back.matching(IDS, LABELS, path), back.images)
    with pytest.raises(ValueError, match="are of other examples .* rebuild them"):
        back.matching(IDS[:-1], LABELS[:-1], path)
    assert not list(tmp_path.glob(".*partial"))


def test_a_store_fed_stored_examples_sees_exactly_them(tiny_model, tmp_path):
    """What a pgd or transfer store holds is the model on the stored images, bit for bit."""
    adv = read_adversarial(stored(tiny_model, tmp_path / "adv.zarr")).images
    store = ActivationStore(extract(tiny_model, tmp_path / "s.zarr", n=40, x=adv))
    direct = ActivationStore(extract(tiny_model, tmp_path / "d.zarr", n=40, x=adv.copy()))
    clean = ActivationStore(extract(tiny_model, tmp_path / "c.zarr", n=40))
    name = store.layers[-1]
    np.testing.assert_array_equal(store.layer(name)[:], direct.layer(name)[:])
    assert not np.array_equal(store.layer(name)[:], clean.layer(name)[:])
    with torch.no_grad():
        logits = tiny_model(torch.from_numpy(adv[:16])).numpy()
    np.testing.assert_allclose(store.layer("head.logits")[:16], logits, rtol=1e-5, atol=1e-6)


def test_damaged_or_incomplete_examples_give_no_images(tiny_model, tmp_path):
    path = stored(tiny_model, tmp_path / "adv.zarr")
    chunk = sorted(p for p in (path / "images" / "c").rglob("*") if p.is_file())[1]
    data = bytearray(chunk.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 9] = bytes((b + 1) % 256 for b in data[mid : mid + 9])
    chunk.write_bytes(bytes(data))
    with pytest.raises(DamagedArtefactError, match="adversarial examples .*'images'.*checksum"):
        read_adversarial(path)
    other = stored(tiny_model, tmp_path / "other.zarr")
    zarr.open_group(str(other), mode="r+").attrs["robrep_complete"] = False
    with pytest.raises(IncompleteAdversarialError, match="incomplete"):
        read_adversarial(other)
    with pytest.raises(FileNotFoundError):
        read_adversarial(tmp_path / "missing.zarr")
