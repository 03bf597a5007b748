"""Benchmark workloads shared by the Starlette baselines and the servekit apps.

Importing this package must stay cheap (no torch): the harness uses it for the
request body, and W1 cold-start measurements import it in the server process.
"""

from __future__ import annotations

#: The 16 input features every workload receives as ``{"x": SAMPLE_X}``.
SAMPLE_X: list[float] = [round(0.1 * i - 0.75, 2) for i in range(16)]

#: Dimension of the input vector.
INPUT_DIM = 16

#: Dynamic batching settings used by W3 (servekit and the hand-rolled baseline).
MAX_BATCH_SIZE = 32
MAX_WAIT_MS = 5.0

#: Environment variable holding torch's intra-op thread count for the model code
#: (set by ``run.py --torch-threads``; read by ``models.configure_torch``).
TORCH_THREADS_ENV = "BENCH_TORCH_THREADS"
