"""Deployments for the process-replica tests (importable by name, as a user's module would be)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import torch

import servekit as sk


class Poison:
    """Pickles fine, fails to unpickle: stands for a CUDA tensor sent to a process without CUDA."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


@sk.deployment(isolation="process", health_check_period_s=0.2, health_check_timeout_s=2)
class Echo:
    """Reports where it runs; echoes, streams, batches, fails and sleeps on demand."""

    def __init__(self, fail_flag: str | None = None, sick_flag: str | None = None) -> None:
        if fail_flag and Path(fail_flag).exists():
            raise RuntimeError(f"refusing to start: {fail_flag} exists")
        self.context = sk.replica_context()
        self.sick_flag = sick_flag
        print(f"echo replica {self.context.replica_id} ready", flush=True)

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "replica_id": self.context.replica_id,
            "device": self.context.device,
            "gpu_ids": list(self.context.gpu_ids),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    async def echo(self, value: Any) -> Any:
        return value

    def sync_echo(self, value: Any) -> Any:
        return value

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def count_sync(self, n: int) -> Iterator[int]:
        yield from range(n)

    @sk.batch(max_batch_size=8, max_wait_ms=50)
    async def double(self, xs: list[float]) -> list[float]:
        await asyncio.sleep(0.01)  # a batch costs something, so calls arriving meanwhile share the next
        return [x * 2 for x in xs]

    async def boom(self) -> None:
        raise KeyError("nope")

    def poison(self) -> Poison:
        return Poison()

    async def sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @sk.idempotent
    async def safe_sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    def check_health(self) -> None:
        if self.sick_flag and Path(self.sick_flag).exists():
            raise RuntimeError("sick flag present")


@sk.deployment(isolation="process")
class TorchModel:
    """A real torch model in a worker: tensors in, tensors out."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@sk.deployment(isolation="process")
class Pipeline:
    """A process replica calling other process replicas through handles."""

    def __init__(self, echo: sk.DeploymentHandle, model: sk.DeploymentHandle) -> None:
        self.echo = echo
        self.model = model

    async def run(self, value: float) -> dict[str, Any]:
        doubled = await self.echo.double(value)
        out = await self.model.forward(torch.full((1, 4), doubled))
        chunks = [chunk async for chunk in self.echo.count(3)]
        return {"doubled": doubled, "out": out.tolist(), "chunks": chunks, "pid": os.getpid()}

    async def relay(self, n: int) -> AsyncIterator[int]:
        async for chunk in self.echo.count(n):
            yield chunk * 10


@sk.deployment
class Front:
    """An in-process ingress in front of a process replica."""

    def __init__(self, echo: sk.DeploymentHandle) -> None:
        self.echo = echo

    @sk.endpoint("/echo")
    async def echo_route(self, body: dict[str, Any]) -> Any:
        return await self.echo.echo(body)

    @sk.endpoint("/double")
    async def double_route(self, body: dict[str, Any]) -> Any:
        return {"y": await self.echo.double(body["x"])}

    @sk.endpoint("/count", methods=("GET",))
    async def count_route(self, n: int) -> AsyncIterator[dict[str, int]]:
        async for i in self.echo.count(n):
            yield {"i": i}

    @sk.endpoint("/pid", methods=("GET",))
    async def pid_route(self) -> dict[str, Any]:
        return {"pid": await self.echo.sleep(0.0), "version": "v1"}

    @sk.endpoint("/slow", methods=("GET",))
    async def slow_route(self, seconds: float) -> dict[str, Any]:
        return {"pid": await self.echo.sleep(seconds)}


@sk.deployment(
    isolation="process",
    autoscaling=sk.Autoscaling(
        min_replicas=1,
        max_replicas=3,
        target_ongoing_requests=1,
        upscale_delay_s=0.3,
        downscale_delay_s=1.0,
        metrics_interval_s=0.1,
        look_back_period_s=0.5,
    ),
    max_ongoing_requests=4,
)
class Elastic:
    """Scales with load."""

    async def work(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()


@sk.deployment(
    isolation="process",
    autoscaling=sk.Autoscaling(
        min_replicas=0,
        max_replicas=1,
        upscale_delay_s=5,
        downscale_delay_s=0.5,
        downscale_to_zero_delay_s=0.5,
        metrics_interval_s=0.1,
        look_back_period_s=0.3,
    ),
    request_timeout_s=30,
)
class Sleepy:
    """Starts at zero replicas."""

    def __init__(self) -> None:
        self.born = time.time()

    async def hello(self) -> str:
        return "hello"
