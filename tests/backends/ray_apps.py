"""Apps only the Ray backend runs: they read Ray's placement (node, GPUs) from inside replicas."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import ray

import servekit as sk
from servekit._replica.batching import batched_state


def placement() -> dict[str, Any]:
    """Where this replica runs, as servekit and as the process see it."""
    context = sk.replica_context()
    return {
        "replica_id": context.replica_id,
        "device": context.device,
        "gpu_ids": list(context.gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


@sk.deployment(resources=sk.Resources(cpus=0.1, gpus=1))
class WholeGpu:
    def where(self) -> dict[str, Any]:
        return placement()


@sk.deployment(num_replicas=2, resources=sk.Resources(cpus=0.1, gpus=0.5))
class HalfGpu:
    async def where(self) -> dict[str, Any]:
        await asyncio.sleep(0.02)  # in flight long enough for concurrent calls to reach both replicas
        return placement()


@sk.deployment(num_replicas=2, resources=sk.Resources(cpus=0.1))
class CpuOnly:
    async def where(self) -> dict[str, Any]:
        await asyncio.sleep(0.02)
        return placement()


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Placements:
    def __init__(
        self, whole: sk.DeploymentHandle, half: sk.DeploymentHandle, cpu: sk.DeploymentHandle
    ) -> None:
        self.targets = {"WholeGpu": whole, "HalfGpu": half, "CpuOnly": cpu}

    async def survey(self, calls: int) -> dict[str, list[dict[str, Any]]]:
        """Each deployment's distinct replicas, as they report themselves."""
        found: dict[str, list[dict[str, Any]]] = {}
        for name, handle in self.targets.items():
            answers = await asyncio.gather(*(handle.where() for _ in range(calls)))
            unique = {answer["replica_id"]: answer for answer in answers}
            found[name] = sorted(unique.values(), key=lambda answer: answer["replica_id"])
        return found


def gpu_app() -> sk.Application:
    return Placements.bind(WholeGpu.bind(), HalfGpu.bind(), CpuOnly.bind())


@sk.deployment(resources=sk.Resources(cpus=0.1, gpus=3))
class TooBig:
    def __call__(self) -> str:
        return "never"


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Broken:
    def __init__(self) -> None:
        raise RuntimeError("weights not found at /models/missing.pt")


@sk.deployment(resources=sk.Resources(cpus=0.1))
class UsesBroken:
    def __init__(self, broken: sk.DeploymentHandle) -> None:
        self.broken = broken


def scaling(policy: str) -> sk.Autoscaling:
    return sk.Autoscaling(
        min_replicas=1,
        max_replicas=3,
        target_ongoing_requests=1,
        target_queue_depth=1,
        policy=policy,
        upscale_delay_s=0.5,
        downscale_delay_s=2,
        metrics_interval_s=0.2,
        look_back_period_s=1,
    )


@sk.deployment(max_ongoing_requests=2, resources=sk.Resources(cpus=0.1))
class Busy:
    async def work(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return sk.replica_context().replica_id


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Versioned:
    def __init__(self, label: str, marker: str) -> None:
        self.label = label
        Path(marker).touch()

    async def label_of(self) -> str:
        await asyncio.sleep(0.005)
        return self.label


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Batched:
    @sk.batch(max_batch_size=8, max_wait_ms=50)
    async def double(self, xs: list[float]) -> list[float]:
        return [x * 2 for x in xs]

    async def batch_options(self) -> dict[str, Any]:
        """This replica's process and the options its `double` queue runs with."""
        state = batched_state(type(self).double)
        assert state is not None
        return {"pid": os.getpid(), **state.limits_for(self).to_dict()}


@sk.deployment(resources=sk.Resources(cpus=0.1, custom={"late_node": 1}))
class OnLateNode:
    """Needs a node labelled `late_node`, which the test cluster has only once a test adds one."""

    def __call__(self) -> str:
        return str(ray.get_runtime_context().get_node_id())
