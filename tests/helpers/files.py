"""Dataset files in their real on-disk formats, small enough for a test."""

from __future__ import annotations

import pickle

import numpy as np


def write_cifar10(root, per_batch=20, test=30, seed=0):
    """A tiny cifar-10-batches-py directory: protocol-2 pickles of plain dicts, as shipped.

    The shipped files are Python 2 pickles whose str keys load as str under encoding="latin1"
    (as torchvision and robrep read them); str keys here load the same way.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name, n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels,
                    "data": data,
                    "filenames": [f"{i}.png" for i in range(n)],
                },
                fh,
                protocol=2,
            )
        return data, labels

    train = [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
    test_data = batch("test_batch", test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(
            {
                "label_names": [f"class{i}" for i in range(10)],
                "num_cases_per_batch": per_batch,
                "num_vis": 3072,
            },
            fh,
            protocol=2,
        )
    return train, test_data
