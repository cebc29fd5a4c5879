"""Thread-pool settings for a process that interleaves torch's OpenMP work with OpenBLAS's.

Extraction runs each layer's forward pass in torch (OpenMP workers), then the layer's Gram in
OpenBLAS (scipy's ssyrk). Idle workers of either pool spin for a while before they sleep (libgomp
300,000 spins; OpenBLAS about 2^28 cycles), on the very cores the other pool now needs. Measured
on benchmarks/bench_gram.py's case (2 cores): extraction 19.5 s -> 13.2 s and the Gram phase
1.30x -> 1.5x the sgemm rate, while a short-op training loop is unchanged (it slows 1.6x under
OMP_WAIT_POLICY=PASSIVE, which is why that is not used).
"""

from __future__ import annotations

import os
import sys
import warnings

SHORT_SPIN = {"GOMP_SPINCOUNT": "10000", "OPENBLAS_THREAD_TIMEOUT": "4"}


def short_spin_environment() -> dict[str, str]:
    """`SHORT_SPIN` under the values already in the environment: apply it with
    `os.environ.update(...)` before importing torch or scipy.linalg (both pools read these once,
    as they load), so idle OpenMP and OpenBLAS workers sleep soon after their work."""
    loaded = [name for name in ("torch", "scipy.linalg") if name in sys.modules]
    if loaded:
        warnings.warn(
            f"short_spin_environment: {', '.join(loaded)} already loaded; its thread pool keeps "
            f"its spin settings",
            stacklevel=2,
        )
    return {key: os.environ.get(key, value) for key, value in SHORT_SPIN.items()}
