"""Micro-check of `@sk.batch` in one process: items/s, mean batch size and latency percentiles.

A model whose batch of n items costs `fixed + per_item * n` ms of CPU on the event loop (like
W3's torch MLP: 0.36 + 0.027 n ms) is called by `c` closed-loop callers, each spending
`overhead` ms of loop time per request first (what the HTTP edge costs a real request). It
runs the same load through `@sk.batch`, through the hand-rolled batcher of the W3 baseline,
and through the model unbatched, and prints one line per run:

    python -m benchmarks.batching_policy --seconds 2 --concurrency 1 64

Run it against another checkout with `PYTHONPATH=/path/to/checkout` to compare versions.
It is a quick check of the batching policy, not a substitute for `benchmarks/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import servekit as sk
from benchmarks.workloads.starlette_apps import Batcher

Call = Callable[[float], Awaitable[Any]]


def spin(ms: float) -> None:
    """Keep the CPU busy for `ms` milliseconds (a model that holds the event loop)."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


class Model:
    """Batch cost `fixed_ms + per_item_ms * n`, on the event loop; records batch sizes."""

    def __init__(self, fixed_ms: float, per_item_ms: float) -> None:
        self.fixed_ms = fixed_ms
        self.per_item_ms = per_item_ms
        self.sizes: list[int] = []

    def run(self, xs: list[float]) -> list[float]:
        self.sizes.append(len(xs))
        spin(self.fixed_ms + self.per_item_ms * len(xs))
        return xs

    @sk.batch(max_batch_size=32, max_wait_ms=5)
    async def predict(self, xs: list[float]) -> list[float]:
        return self.run(xs)


async def load(call: Call, concurrency: int, seconds: float, overhead_ms: float) -> list[float]:
    """Latencies (ms) of `concurrency` closed-loop callers over `seconds`."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            spin(overhead_ms)
            await call(1.0)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0)  # the response goes out; the next request comes in

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def report(label: str, concurrency: int, seconds: float, latencies: list[float], sizes: list[int]) -> None:
    """Print one result line."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    mean_batch = statistics.fmean(sizes) if sizes else 1.0
    print(
        f"{label:<12} c={concurrency:<3} items/s={len(latencies) / seconds:8.0f} "
        f"mean_batch={mean_batch:5.1f} p50={statistics.median(ordered):6.2f}ms p99={p99:6.2f}ms"
    )


async def run_all(args: argparse.Namespace) -> None:
    """Each mode at each concurrency, `rounds` times (interleaved, since a shared CPU drifts)."""
    for _ in range(args.rounds):
        for concurrency in args.concurrency:
            await run_round(args, concurrency)


async def run_round(args: argparse.Namespace, concurrency: int) -> None:
    """Unbatched, hand-rolled batcher and `@sk.batch`, one after the other."""
    unbatched = Model(args.fixed_ms, args.per_item_ms)

    async def direct(x: float, model: Model = unbatched) -> Any:
        return model.run([x])[0]

    latencies = await load(direct, concurrency, args.seconds, args.overhead_ms)
    report("unbatched", concurrency, args.seconds, latencies, unbatched.sizes)

    hand = Model(args.fixed_ms, args.per_item_ms)
    batcher = Batcher(lambda xs, model=hand: model.run(xs), 32, 0.005)  # type: ignore[misc]
    latencies = await load(batcher.submit, concurrency, args.seconds, args.overhead_ms)  # type: ignore[arg-type]
    report("hand-rolled", concurrency, args.seconds, latencies, hand.sizes)
    if batcher._task is not None:
        batcher._task.cancel()

    model = Model(args.fixed_ms, args.per_item_ms)
    latencies = await load(model.predict, concurrency, args.seconds, args.overhead_ms)
    report("sk.batch", concurrency, args.seconds, latencies, model.sizes)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--fixed-ms", type=float, default=0.36)
    parser.add_argument("--per-item-ms", type=float, default=0.027)
    parser.add_argument("--overhead-ms", type=float, default=0.1, help="loop time per request (the edge)")
    asyncio.run(run_all(parser.parse_args()))


if __name__ == "__main__":
    main()
