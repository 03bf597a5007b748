"""W2's three stages written as plain `def` methods against the same stages as `async def`.

    python -m benchmarks.sync_stages                       # ~40 s
    python -m benchmarks.sync_stages --seconds 2 --concurrency 1,64 --rounds 3

In-process, no HTTP: an ingress started with ``sk.run`` drives ``Normalize -> Model ->
Postprocess`` (W2's work: a 16-float vector, the torch MLP 16-256-256-10, softmax) through
handles. The timing loop runs inside the ingress, on servekit's event loop: ``concurrency``
tasks each call the three stages in order, for ``seconds`` after a warm-up; each sample is
``perf_counter`` around one pipeline (each task yields to the others between pipelines, as
requests arriving on sockets would). Variants:

- ``async``: ``async def`` stages (what the W2 benchmark measures);
- ``def``: plain ``def`` stages, as users write them (servekit decides inline or thread);
- ``def, threaded``: the same, forced onto worker threads with ``@sk.threaded`` (the
  handoff every sync call paid before), when this servekit has the marker.

Every variant runs in each of `--rounds` paired rounds; prints the median calls/s, p50 and
p99 per variant and concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import servekit as sk
from benchmarks.workloads.models import w2_model
from benchmarks.workloads.transforms import normalize, postprocess

VECTOR = [float(i % 7) - 3.0 for i in range(16)]


@sk.deployment
class AsyncNormalize:
    async def __call__(self, x: list[float]) -> list[float]:
        return normalize(x)


@sk.deployment
class AsyncModel:
    def __init__(self) -> None:
        self.model = w2_model()

    async def __call__(self, x: list[float]) -> list[float]:
        return self.model(x)  # type: ignore[no-any-return]


@sk.deployment
class AsyncPostprocess:
    async def __call__(self, logits: list[float]) -> dict[str, Any]:
        return postprocess(logits)


class _Normalize:
    def __call__(self, x: list[float]) -> list[float]:
        return normalize(x)


class _Model:
    def __init__(self) -> None:
        self.model = w2_model()

    def __call__(self, x: list[float]) -> list[float]:
        return self.model(x)  # type: ignore[no-any-return]


class _Postprocess:
    def __call__(self, logits: list[float]) -> dict[str, Any]:
        return postprocess(logits)


SyncNormalize = sk.deployment(name="SyncNormalize")(_Normalize)
SyncModel = sk.deployment(name="SyncModel")(_Model)
SyncPostprocess = sk.deployment(name="SyncPostprocess")(_Postprocess)


@sk.deployment
class Driver:
    """Runs the load from inside the app, on servekit's loop."""

    def __init__(
        self, normalize: sk.DeploymentHandle, model: sk.DeploymentHandle, post: sk.DeploymentHandle
    ) -> None:
        self.stages = (normalize, model, post)

    async def pipeline(self) -> dict[str, Any]:
        normalize_, model, post = self.stages
        return await post(await model(await normalize_(VECTOR)))  # type: ignore[no-any-return]

    async def load(self, concurrency: int, seconds: float) -> dict[str, float]:
        for _ in range(200):  # warm-up: lets servekit measure the stages
            await self.pipeline()
        samples: list[float] = []
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                await asyncio.sleep(0)  # a new request: let the other callers in, as a server would
                started = time.perf_counter()
                await self.pipeline()
                samples.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        ordered = sorted(samples)
        return {
            "calls_per_s": len(samples) / elapsed,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        }


def variants() -> dict[str, sk.Application]:
    """The pipelines to compare, by name."""
    apps = {
        "async": Driver.bind(AsyncNormalize.bind(), AsyncModel.bind(), AsyncPostprocess.bind()),
        "def": Driver.bind(SyncNormalize.bind(), SyncModel.bind(), SyncPostprocess.bind()),
    }
    threaded = getattr(sk, "threaded", None)
    if threaded is not None:
        stages = [
            sk.deployment(name=f"Threaded{cls.__name__}")(threaded(type(cls.__name__, (cls,), {})))
            for cls in (_Normalize, _Model, _Postprocess)
        ]
        apps["def, threaded"] = Driver.bind(*(stage.bind() for stage in stages))
    return apps


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated pipelines in flight")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every variant (medians shown)")
    parser.add_argument("--variants", default="", help="comma-separated variants to run (default: all)")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    chosen = set(args.variants.split(",")) if args.variants else None
    apps = {name: app for name, app in variants().items() if chosen is None or name in chosen}
    handles = {name: sk.run(app) for name, app in apps.items()}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):  # paired rounds: a noisy neighbour hits every variant alike
            for name, handle in handles.items():
                for level in levels:
                    stats = handle.load(level, args.seconds).result(timeout=args.seconds + 120)
                    runs.setdefault((name, level), []).append(stats)
    finally:
        for handle in handles.values():
            handle.shutdown()
    print(
        f"{'variant':<16}{'c':>4}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}   (median of {args.rounds} rounds)"
    )
    for (name, level), stats in runs.items():
        median = {key: statistics.median(run[key] for run in stats) for key in stats[0]}
        print(
            f"{name:<16}{level:>4}{median['calls_per_s']:>10.0f}{median['p50_ms']:>9.3f}{median['p99_ms']:>9.3f}"
        )


if __name__ == "__main__":
    main()
