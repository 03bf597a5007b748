"""Apps for the process-replica measurements that are not wrk workloads.

* Hops (:mod:`benchmarks.hops`): an in-process ingress that times ``await
  handle.echo(x)`` against an ``Echo`` deployment that runs in-process or in a
  worker process.  The loop runs inside the ingress, so the numbers are the hop
  alone: no HTTP, no client.
* Step load (:mod:`benchmarks.step_load`): an in-process HTTP ingress in front of an
  autoscaled process deployment whose method sleeps and returns the worker's pid,
  so a client can tell which replica served each request.

Importing this module must stay cheap (numpy is imported only when a numpy payload
is asked for): worker processes import it to rebuild the deployments.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import servekit as sk
from benchmarks.workloads import SAMPLE_X

#: Payload name -> description, for the report.
PAYLOADS: dict[str, str] = {
    "int": "one int",
    "floats16": "a list of 16 floats",
    "numpy1mb": "a 1 MiB float32 numpy array (262144 items)",
}


def make_payload(kind: str) -> Any:
    """The value passed to ``echo`` for payload ``kind``."""
    if kind == "int":
        return 1
    if kind == "floats16":
        return list(SAMPLE_X)
    if kind == "numpy1mb":
        import numpy as np

        return np.random.default_rng(0).random(262_144, dtype=np.float32)
    raise ValueError(f"unknown payload {kind!r}; choose from {list(PAYLOADS)}")


# --- hops -----------------------------------------------------------------


@sk.deployment(max_ongoing_requests=256)
class HopEcho:
    """The far end of a hop: returns its argument."""

    async def echo(self, x: Any) -> Any:
        """Return ``x``."""
        return x

    async def pid(self) -> int:
        """The process this replica runs in."""
        return os.getpid()


@sk.deployment(max_ongoing_requests=256)
class HopIngress:
    """Times calls to :class:`HopEcho` from inside a replica (the ingress)."""

    def __init__(self, echo: sk.DeploymentHandle) -> None:
        """Keep the handle."""
        self.echo = echo

    async def where(self) -> dict[str, int]:
        """Pids of the ingress and of the echo replica."""
        return {"ingress": os.getpid(), "echo": await self.echo.pid()}

    async def sequential(self, kind: str, calls: int, warmup: int) -> list[int]:
        """``calls`` sequential hops after ``warmup`` untimed ones; each hop's time in ns."""
        payload = make_payload(kind)
        for _ in range(warmup):
            await self.echo.echo(payload)
        clock = time.perf_counter_ns
        samples = [0] * calls
        for index in range(calls):
            started = clock()
            await self.echo.echo(payload)
            samples[index] = clock() - started
        return samples

    async def pipelined(self, kind: str, calls: int, in_flight: int) -> float:
        """``calls`` hops with ``in_flight`` of them outstanding at a time; seconds for all of them."""
        payload = make_payload(kind)
        remaining = calls

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.echo.echo(payload)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        return time.perf_counter() - started


def build_hops(isolation: str) -> sk.Application:
    """The hop app with the echo deployment ``in_process`` or in a worker ``process``."""
    return HopIngress.bind(HopEcho.options(isolation=isolation).bind())


# --- step load ------------------------------------------------------------

#: Autoscaling of the step-load worker deployment (reported with the results).
STEP_AUTOSCALING: dict[str, float] = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
    "metrics_interval_s": 0.1,
    "look_back_period_s": 1.0,
}


@sk.deployment(
    isolation="process",
    autoscaling=sk.Autoscaling(**STEP_AUTOSCALING),
    max_ongoing_requests=16,
)
class StepWorker:
    """Holds each request for ``seconds`` (no CPU) and says which process served it."""

    async def work(self, seconds: float) -> int:
        """Sleep, then return this worker's pid."""
        await asyncio.sleep(seconds)
        return os.getpid()


@sk.deployment
class StepIngress:
    """HTTP front: ``GET /work?seconds=...`` -> ``{"pid": ...}``."""

    def __init__(self, worker: sk.DeploymentHandle) -> None:
        """Keep the worker's handle."""
        self.worker = worker

    @sk.endpoint("/work", methods=("GET",))
    async def work(self, seconds: float) -> dict[str, int]:
        """Forward to the worker; return the pid that served."""
        return {"pid": await self.worker.work(seconds)}


def build_step() -> sk.Application:
    """The step-load app."""
    return StepIngress.bind(StepWorker.bind())
