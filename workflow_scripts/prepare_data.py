"""Rule prepare_data: load a dataset, split it and save the splits as one .npz."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from robrep.learn.data import load_splits, save_splits

from _log import redirect_to_log

with redirect_to_log(snakemake):
    p = snakemake.params
    splits = load_splits(
        snakemake.wildcards.dataset, p.data_root, dict(p.options), p.val_fraction, p.split_seed
    )
    print(
        f"{snakemake.wildcards.dataset}: train {len(splits.y_train)}, val {len(splits.y_val)}, "
        f"test {len(splits.y_test)}, image {splits.shape}, classes {len(splits.classes)}"
    )
    save_splits(splits, snakemake.output[0])
