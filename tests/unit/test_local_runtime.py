"""The local runtime driven directly on the test's event loop: scaling, draining, status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import servekit as sk
from servekit._replica.latency import DEFAULT_CAPACITY
from servekit._runtime.local.runtime import LocalRuntime
from servekit._spec.graph import build_graph


@sk.deployment(max_ongoing_requests=1, max_queued_requests=10)
class Worker:
    def __init__(self) -> None:
        self.name = sk.replica_context().replica_id

    async def work(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return self.name

    async def ticks(self, count: int) -> AsyncIterator[int]:
        for tick in range(count):
            await asyncio.sleep(0)
            yield tick


@pytest.fixture
async def runtime() -> AsyncIterator[LocalRuntime]:
    runtime = LocalRuntime(build_graph(Worker.bind()))
    await runtime.start()
    yield runtime
    await runtime.shutdown(grace_s=1)


async def test_scaling_up_adds_replicas_that_take_requests(runtime: LocalRuntime) -> None:
    await runtime.scale("Worker", 3)
    names = await asyncio.gather(*(runtime.call("Worker", "work", (0.05,), {}) for _ in range(3)))
    assert sorted(names) == ["Worker#0", "Worker#1", "Worker#2"]
    assert runtime.status()["deployments"]["Worker"]["running_replicas"] == 3


async def test_scaling_down_drains_in_flight_requests(
    runtime: LocalRuntime, await_until: Callable[..., Awaitable[None]]
) -> None:
    await runtime.scale("Worker", 2)
    in_flight = [asyncio.ensure_future(runtime.call("Worker", "work", (0.2,), {})) for _ in range(2)]
    view = runtime.states["Worker"].replicas
    await await_until(lambda: [slot.ongoing for slot in view.slots] == [1, 1], "a call on each replica")
    await runtime.scale("Worker", 1)
    assert sorted(await asyncio.gather(*in_flight)) == ["Worker#0", "Worker#1"]
    assert runtime.status()["deployments"]["Worker"]["target_replicas"] == 1
    assert len(runtime.status()["deployments"]["Worker"]["replicas"]) == 1


async def test_queued_requests_wait_for_a_free_replica(
    runtime: LocalRuntime, await_until: Callable[..., Awaitable[None]]
) -> None:
    calls = [asyncio.ensure_future(runtime.call("Worker", "work", (0.05,), {})) for _ in range(3)]
    replicas = runtime.states["Worker"].replicas
    await await_until(lambda: (replicas.ongoing, replicas.queued) == (1, 2), "one call running, two queued")
    assert await asyncio.gather(*calls) == ["Worker#0"] * 3


async def test_a_stream_holds_its_replica_until_it_ends(runtime: LocalRuntime) -> None:
    stream = runtime.stream("Worker", "ticks", (3,), {})
    assert await anext(stream) == 0
    assert runtime.status()["deployments"]["Worker"]["ongoing"] == 1
    assert [tick async for tick in stream] == [1, 2]
    assert runtime.status()["deployments"]["Worker"]["ongoing"] == 0


async def test_ready_only_when_every_deployment_is_running(runtime: LocalRuntime) -> None:
    assert runtime.ready
    await runtime.shutdown(grace_s=0)
    assert not runtime.ready
    assert runtime.status()["state"] == "stopped"


@sk.deployment
class SlowStart:
    def __init__(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


async def test_a_start_past_start_timeout_fails_and_stops_what_started() -> None:
    runtime = LocalRuntime(build_graph(SlowStart.bind(1.0)), start_timeout_s=0.1)
    with pytest.raises(sk.errors.DeploymentStartError, match=r"did not start within start_timeout_s=0\.1"):
        await runtime.start()
    assert runtime.status()["state"] == "stopped"


async def test_per_request_bookkeeping_stays_bounded_without_an_autoscaler(runtime: LocalRuntime) -> None:
    state = runtime.states["Worker"]
    for _ in range(3 * DEFAULT_CAPACITY):
        await runtime.call("Worker", "work", (0,), {})
    assert state.autoscaler is None  # nothing ever drains what the calls record
    assert len(state.latencies) == DEFAULT_CAPACITY
    assert runtime.status()["deployments"]["Worker"]["ongoing"] == 0
