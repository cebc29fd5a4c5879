"""Send a rule script's stdout/stderr to its Snakemake log file."""

import contextlib
import sys


@contextlib.contextmanager
def redirect_to_log(snakemake):
    """Everything printed (tqdm included) goes to `snakemake.log[0]` when the rule has a log."""
    if not snakemake.log:
        yield
        return
    with open(snakemake.log[0], "w", buffering=1) as fh:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old
