"""Admission control: at most max_ongoing per replica, a bounded FIFO queue, 503 beyond it, with a
Retry-After estimated from how fast the queue drains (a fake clock drives the estimate)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._runtime.replica_set import ReplicaSet, ReplicaSlot
from servekit.errors import DeploymentUnavailableError, OverloadedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_set(
    replicas: int, max_ongoing: int = 2, max_queued: int = 2, clock: FakeClock | None = None
) -> ReplicaSet:
    replica_set = ReplicaSet(
        "Model", max_ongoing, max_queued, rng=random.Random(0), clock=clock or FakeClock()
    )
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


async def _fill(replica_set: ReplicaSet, running: int, queued: int) -> tuple[list[ReplicaSlot], list[Any]]:
    slots = [await replica_set.acquire() for _ in range(running)]
    waiters = [asyncio.ensure_future(replica_set.acquire()) for _ in range(queued)]
    await asyncio.sleep(0)
    return slots, waiters


async def _refusal(replica_set: ReplicaSet) -> OverloadedError:
    with pytest.raises(OverloadedError) as info:
        await replica_set.acquire()
    return info.value


async def _complete(replica_set: ReplicaSet, clock: FakeClock, count: int, every_s: float) -> None:
    """`count` requests, one after another, each running `every_s` on the fake clock."""
    for _ in range(count):
        slot = await replica_set.acquire()
        clock.now += every_s
        replica_set.release(slot)


async def test_retry_after_is_one_second_before_any_request_completed() -> None:
    replica_set = make_set(1, max_ongoing=1, max_queued=4)
    _, waiters = await _fill(replica_set, running=1, queued=4)
    refused = await _refusal(replica_set)
    assert refused.retry_after_s == 1
    assert refused.headers() == {"Retry-After": "1"}
    for waiter in waiters:
        waiter.cancel()


@pytest.mark.parametrize(
    ("seconds_per_request", "queued", "retry_after"),
    [
        pytest.param(0.5, 4, 2, id="2-per-s-4-queued"),
        pytest.param(2.0, 4, 8, id="half-per-s-4-queued"),
        pytest.param(0.3, 5, 2, id="rounds-up"),
        pytest.param(0.01, 4, 1, id="fast-drain-floor-1"),
        pytest.param(30.0, 4, 60, id="slow-drain-capped-at-60"),
    ],
)
async def test_retry_after_is_the_time_the_queue_takes_to_drain(
    seconds_per_request: float, queued: int, retry_after: int
) -> None:
    clock = FakeClock()
    replica_set = make_set(1, max_ongoing=1, max_queued=queued, clock=clock)
    await _complete(replica_set, clock, count=10, every_s=seconds_per_request)
    _, waiters = await _fill(replica_set, running=1, queued=queued)
    refused = await _refusal(replica_set)
    assert refused.retry_after_s == retry_after
    assert refused.headers() == {"Retry-After": str(retry_after)}
    assert f"retry in {retry_after} s" in refused.message
    for waiter in waiters:
        waiter.cancel()


async def test_idle_time_between_requests_does_not_slow_the_measured_drain() -> None:
    clock = FakeClock()
    replica_set = make_set(1, max_ongoing=1, max_queued=8, clock=clock)
    for _ in range(8):  # each request takes 0.25 s, then nothing runs for 10 s
        await _complete(replica_set, clock, count=1, every_s=0.25)
        clock.now += 10
    _, waiters = await _fill(replica_set, running=1, queued=8)
    assert (await _refusal(replica_set)).retry_after_s == 2  # 8 queued at 4 per busy second
    for waiter in waiters:
        waiter.cancel()


async def test_requests_completing_together_count_as_a_fast_drain() -> None:
    """A batch of 10 finishing at once every second drains 10 per second, not 1."""
    clock = FakeClock()
    replica_set = make_set(1, max_ongoing=10, max_queued=30, clock=clock)
    for _ in range(3):
        batch = [await replica_set.acquire() for _ in range(10)]
        clock.now += 1.0
        for slot in batch:
            replica_set.release(slot)
    _, waiters = await _fill(replica_set, running=10, queued=30)
    assert (await _refusal(replica_set)).retry_after_s == 3
    for waiter in waiters:
        waiter.cancel()


async def test_the_drain_estimate_follows_a_model_that_slows_down() -> None:
    clock = FakeClock()
    replica_set = make_set(1, max_ongoing=1, max_queued=4, clock=clock)
    await _complete(replica_set, clock, count=20, every_s=0.1)  # 10 per second
    await _complete(replica_set, clock, count=10, every_s=1.0)  # then 1 per second
    _, waiters = await _fill(replica_set, running=1, queued=4)
    assert (await _refusal(replica_set)).retry_after_s == 4
    for waiter in waiters:
        waiter.cancel()
