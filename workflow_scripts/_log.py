"""What every rule script does first: send its output to the job's log, ignore Snakemake's marks."""

import contextlib
import sys
import time
import traceback
import warnings


@contextlib.contextmanager
def redirect_to_log(snakemake):
    """Everything printed (tqdm included) goes to `snakemake.log[0]` when the rule has a log, and
    so does the traceback of a failure (it is also raised, so Snakemake and the console see it);
    the log starts and ends with a timestamped line (the end says how long the job took).

    Snakemake drops a `.snakemake_timestamp` file into directory outputs (the activation stores),
    which zarr reports as an unknown object when it opens them: a Snakemake fact, ignored here.
    """
    warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
    if not snakemake.log:
        yield
        return
    with open(snakemake.log[0], "w", buffering=1) as fh:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        start = time.monotonic()
        print(f"[{_now()}] rule {getattr(snakemake, 'rule', '?')} started")
        try:
            yield
        except BaseException:
            traceback.print_exc(file=fh)  # the log holds why the job failed, not only the console
            print(f"[{_now()}] failed after {time.monotonic() - start:.1f} s")
            raise
        else:
            print(f"[{_now()}] done in {time.monotonic() - start:.1f} s")
        finally:
            sys.stdout, sys.stderr = old


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
