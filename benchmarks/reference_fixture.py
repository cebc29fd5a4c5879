"""Write tests/fixtures/ckatorch_reference.json from ckatorch 1.0.3 (benchmark environment only).

Run with the benchmark environment (see benchmarks/README.md):
    PYTHONPATH=benchmarks/.env .venv/bin/python benchmarks/reference_fixture.py
"""

import json
from pathlib import Path

import numpy as np
import torch
from ckatorch.core import cka_base, cka_batch

SEED, N, DX, DY, BATCH, THRESHOLD = 2024, 400, 24, 10, 50, 0.8

data = np.random.default_rng(SEED)
x = data.normal(size=(N, DX)).astype(np.float32)
y = (x[:, :DY] + 0.7 * data.normal(size=(N, DY))).astype(np.float32)
xt, yt = torch.from_numpy(x), torch.from_numpy(y)
out = {
    "source": "ckatorch==1.0.3 ckatorch.core.cka_batch / cka_base",
    "seed": SEED,
    "n": N,
    "dx": DX,
    "dy": DY,
    "batch_size": BATCH,
    "rbf_threshold": THRESHOLD,
    "cka_batch": float(cka_batch(xt.view(N // BATCH, BATCH, DX), yt.view(N // BATCH, BATCH, DY))),
    "cka_linear": float(cka_base(xt, yt, kernel="linear", unbiased=False)),
    "cka_linear_unbiased": float(cka_base(xt, yt, kernel="linear", unbiased=True)),
    "cka_rbf": float(cka_base(xt, yt, kernel="rbf", threshold=THRESHOLD)),
}
path = Path(__file__).parents[1] / "tests" / "fixtures" / "ckatorch_reference.json"
path.write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
