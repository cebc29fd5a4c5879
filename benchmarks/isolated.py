"""Run one measurement in a fresh spawned process, so that timings and peak memory are not
shared between measurements; an exception in the child is raised in the parent."""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _child(fn: Callable[..., Any], args: tuple, queue) -> None:
    sys.path.insert(0, str(HERE))
    try:
        queue.put(fn(*args))
    except BaseException as err:  # the parent must not wait for a result that never comes
        queue.put(err)
        raise


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` (a module-level function) in a spawned child process; its return value."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if isinstance(out, BaseException):
        raise RuntimeError(f"{fn.__name__}{args!r:.200} failed in its child process") from out
    return out
