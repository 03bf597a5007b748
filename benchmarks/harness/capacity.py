"""W3 model capacity: time one item vs a batch of 32 directly in torch.

Run as ``python -m benchmarks.harness.capacity`` (``run.py`` does this in a
fresh process, with the same ``BENCH_TORCH_THREADS`` as the servers); prints
one JSON object.  Two timings per batch size: the bare ``net(tensor)`` forward
pass, and ``MLP.batch`` (list -> tensor -> forward -> list), which is what the
servers pay per batch.  The throughput ceiling the model allows is
``32 / t(batch 32)`` items/s.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.workloads import MAX_BATCH_SIZE, SAMPLE_X
from benchmarks.workloads.models import w3_model


def time_ms(fn: Callable[[], object], iterations: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time per call (ms), after a warm-up."""
    for _ in range(max(20, iterations // 5)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter() - start) / iterations * 1e3)
    return statistics.median(samples)


def measure(iterations: int = 400) -> dict[str, float | int]:
    """Return the batch-1 and batch-32 timings and the derived ceiling."""
    model = w3_model()
    one = [list(SAMPLE_X)]
    full = [list(SAMPLE_X) for _ in range(MAX_BATCH_SIZE)]
    t_one, t_full = torch.tensor(one), torch.tensor(full)
    with torch.inference_mode():
        fwd1 = time_ms(lambda: model.net(t_one), iterations)
        fwd32 = time_ms(lambda: model.net(t_full), iterations)
    call1 = time_ms(lambda: model.batch(one), iterations)
    call32 = time_ms(lambda: model.batch(full), iterations)
    return {
        "torch_threads": torch.get_num_threads(),
        "batch_size": MAX_BATCH_SIZE,
        "forward_1_ms": fwd1,
        "forward_32_ms": fwd32,
        "call_1_ms": call1,
        "call_32_ms": call32,
        "per_item_speedup": call1 * MAX_BATCH_SIZE / call32,
        "ceiling_items_per_s": MAX_BATCH_SIZE / call32 * 1e3,
        "unbatched_items_per_s": 1e3 / call1,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
