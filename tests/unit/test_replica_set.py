"""Admission control: at most max_ongoing per replica, a bounded FIFO queue, 503 beyond it."""

from __future__ import annotations

import asyncio
import random

import pytest

from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._runtime.replica_set import ReplicaSet
from servekit.errors import DeploymentUnavailableError, OverloadedError


def make_set(replicas: int, max_ongoing: int = 2, max_queued: int = 2) -> ReplicaSet:
    replica_set = ReplicaSet("Model", max_ongoing, max_queued, rng=random.Random(0))
    for index in range(replicas):
        replica_set.add(Replica(ReplicaContext("Model", f"Model#{index}"), object, is_function=False))
    return replica_set


async def test_requests_spread_to_the_less_loaded_replica() -> None:
    replica_set = make_set(2, max_ongoing=10)
    slots = [await replica_set.acquire() for _ in range(10)]
    loads = sorted(slot.ongoing for slot in replica_set.slots)
    assert loads == [5, 5]
    for slot in slots:
        replica_set.release(slot)
    assert replica_set.ongoing == 0


async def test_no_replica_exceeds_max_ongoing_requests() -> None:
    replica_set = make_set(2, max_ongoing=2, max_queued=10)
    for _ in range(4):
        await replica_set.acquire()
    waiter = asyncio.ensure_future(replica_set.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert all(slot.ongoing == 2 for slot in replica_set.slots)
    assert replica_set.queued == 1
    waiter.cancel()


async def test_queue_full_is_refused_with_overloaded_error() -> None:
    replica_set = make_set(1, max_ongoing=1, max_queued=1)
    await replica_set.acquire()
    queued = asyncio.ensure_future(replica_set.acquire())
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError, match="max_queued_requests=1") as info:
        await replica_set.acquire()
    assert info.value.status_code == 503
    assert info.value.headers() == {"Retry-After": "1"}
    assert replica_set.rejected == 1
    queued.cancel()


async def test_released_capacity_goes_to_the_oldest_waiter() -> None:
    replica_set = make_set(1, max_ongoing=1, max_queued=5)
    running = await replica_set.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        slot = await replica_set.acquire()
        order.append(n)
        replica_set.release(slot)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    replica_set.release(running)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert replica_set.ongoing == 0


async def test_a_cancelled_waiter_does_not_leak_capacity() -> None:
    replica_set = make_set(1, max_ongoing=1, max_queued=5)
    running = await replica_set.acquire()
    doomed = asyncio.ensure_future(replica_set.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0)
    replica_set.release(running)
    assert replica_set.ongoing == 0
    slot = await asyncio.wait_for(replica_set.acquire(), 1)
    assert slot.ongoing == 1


async def test_close_fails_waiters_and_refuses_new_requests() -> None:
    replica_set = make_set(1, max_ongoing=1, max_queued=5)
    running = await replica_set.acquire()
    waiter = asyncio.ensure_future(replica_set.acquire())
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(replica_set.close(grace_s=5))
    await asyncio.sleep(0)
    with pytest.raises(DeploymentUnavailableError):
        await waiter
    with pytest.raises(DeploymentUnavailableError):
        await replica_set.acquire()
    assert not closing.done()  # still draining the running request
    replica_set.release(running)
    assert len(await closing) == 1


async def test_retire_waits_for_in_flight_requests() -> None:
    replica_set = make_set(2, max_ongoing=4)
    first = replica_set.slots[0]
    first.ongoing = 1
    retiring = asyncio.ensure_future(replica_set.retire(first, grace_s=5))
    await asyncio.sleep(0)
    assert first not in replica_set.slots
    assert not retiring.done()
    replica_set.release(first)
    await asyncio.wait_for(retiring, 1)
