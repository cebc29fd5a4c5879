"""What every bench records: its figures as JSON beside the commit, the arguments and the machine's
sgemm rate measured in the same run (timings on these machines differ by 3x or more, so a number
means something only beside that rate and beside its own baseline).

Each bench writes `benchmarks/results/<bench>[-quick].json` (git-ignored: benchmark data is
rebuilt, not committed); `benchmarks/report.py` renders them as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def commit() -> str:
    """The checkout's commit, with `-dirty` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}-dirty" if dirty else head or "unknown"


def sgemm_gflops(n: int = 1024, threads: int | None = None, repeats: int = 5) -> float:
    """The machine's float32 matrix-product rate now (numpy/BLAS, n x n, best of `repeats`)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads):
        a @ a  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def write(bench: str, args: argparse.Namespace, figures: dict[str, Any], threads: int) -> Path:
    """Write `figures` of one run of `bench` and return the file."""
    quick = "-quick" if getattr(args, "quick", False) else ""
    path = getattr(args, "json", None) or RESULTS / f"{bench}{quick}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": bench,
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": threads},
        "sgemm_gflops": sgemm_gflops(threads=threads),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "figures": figures,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"figures written to {path} (sgemm {record['sgemm_gflops']:.1f} GFLOP/s now)")
    return path
