"""Data loaders on fixtures written in the real on-disk formats; splits are fixed and stratified."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from robrep.io.checksums import DamagedArtefactError
from robrep.learn.data import (
    DatasetMissingError,
    evaluation_subset,
    examples_in_test_split,
    load_splits,
    read_splits,
    save_splits,
    stratified_split,
)

from helpers.files import write_cifar10


def test_cifar10_from_pickle_directory(tmp_path):
    train, (test_x, test_y) = write_cifar10(tmp_path)
    splits = load_splits("cifar10", tmp_path, {}, val_fraction=0.2, split_seed=0)
    assert splits.x_train.dtype == np.uint8 and splits.shape == (3, 32, 32)
    assert len(splits.y_train) + len(splits.y_val) == 100
    np.testing.assert_array_equal(splits.x_test.reshape(30, -1), test_x)
    np.testing.assert_array_equal(splits.y_test, test_y)
    assert splits.classes[3] == "class3"
    # Each training image is one of the written ones, in the CHW layout torchvision uses.
    all_train = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    assert any(np.array_equal(splits.x_val[0], img) for img in all_train)


def test_cifar_refuses_pickles_with_code(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": print}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_splits("cifar10", tmp_path, {}, 0.2, 0)


@pytest.mark.slow
def test_imagefolder_tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenette2-160"
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("n01440764", "n02102040"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"img{i}.JPEG", format="JPEG")
    splits = load_splits("imagenette", tmp_path, {"image_size": 24}, 0.34, 0)
    assert splits.shape == (3, 24, 24) and splits.x_train.dtype == np.uint8
    assert len(splits.y_test) == 6 and splits.classes == ["n01440764", "n02102040"]
    assert sorted(np.bincount(splits.y_val).tolist()) == [2, 2]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenette", "imagewoof"])
def test_missing_dataset_names_path_and_remedy(tmp_path, name):
    with pytest.raises(
        DatasetMissingError, match=f"dataset '{name}': .*{tmp_path}.*(download|unpack)"
    ):
        load_splits(name, tmp_path, {}, 0.1, 0)


def test_digits_splits_are_fixed_stratified_and_in_unit_range(tmp_path):
    a = load_splits("digits", tmp_path, {"image_size": 16, "channels": 3}, 0.15, 0)
    b = load_splits("digits", tmp_path, {"image_size": 16, "channels": 3}, 0.15, 0)
    assert a.shape == (3, 16, 16)
    assert 0 <= a.x_train.min() and a.x_train.max() <= 1
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    counts = np.bincount(a.y_val)
    assert counts.max() - counts.min() <= 2
    assert len(a.y_test) == examples_in_test_split("digits") == 359  # what n_examples can use
    d = load_splits("digits", tmp_path, {"test_fraction": 0.3}, 0.15, 0)
    assert len(d.y_test) == examples_in_test_split("digits", {"test_fraction": 0.3})
    save_splits(a, tmp_path / "s.npz")
    c = read_splits(tmp_path / "s.npz")
    np.testing.assert_array_equal(c.x_test, a.x_test)
    assert c.mean == pytest.approx(a.mean) and c.classes == a.classes
    # a damaged or truncated splits file is named with its rebuild, not a bare BadZipFile
    path = tmp_path / "s.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside x_test's bytes: the member's CRC32 fails
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedArtefactError, match=rf"{path} cannot be read as the data splits"):
        read_splits(path)
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(DamagedArtefactError, match=rf"{path} cannot be read.*forcerun {path}"):
        read_splits(path)


def test_stratified_split_and_subset_are_seeded():
    labels = np.repeat(np.arange(4), 25)
    kept, held = stratified_split(labels, 0.2, 3)
    assert len(np.intersect1d(kept, held)) == 0 and np.bincount(labels[held]).tolist() == [5] * 4
    np.testing.assert_array_equal(
        evaluation_subset(labels, 10, 1), evaluation_subset(labels, 10, 1)
    )
    assert len(evaluation_subset(labels, 500, 1)) == 100
