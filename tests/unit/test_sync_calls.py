"""Where sync methods run: the inline-or-thread policy (a fake clock), and the replica using it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

import servekit as sk
from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._replica.sync_calls import InlineLimits, SyncCallPolicy, sync_mode

FAST = 0.0001  # 0.1 ms
SLOW = 0.05  # 50 ms: a model call, a sleep
LIMITS = InlineLimits(
    inline_below_s=0.001,
    demote_above_s=0.005,
    warmup_calls=3,
    backoff_s=1.0,
    max_backoff_s=8.0,
    stall_share=0.01,
    forgive_after_calls=1000,
    forgive_after_s=200.0,
)
STALL = 0.006  # just over demote_above_s: 0.6 s at a 1% stall share, under the 1 s backoff


def warmed(policy: SyncCallPolicy, now: float = 0.0, duration: float = FAST) -> SyncCallPolicy:
    for _ in range(LIMITS.warmup_calls):
        policy.record(duration, False, now)
    return policy


def test_a_new_method_runs_on_threads_until_it_proved_short() -> None:
    policy = SyncCallPolicy(limits=LIMITS)
    assert not policy.inline
    policy.record(FAST, False, 0.0)
    policy.record(FAST, False, 0.0)
    assert not policy.inline, "two calls are not enough to trust"
    policy.record(FAST, False, 0.0)
    assert policy.inline


def test_a_slow_method_stays_on_threads() -> None:
    assert not warmed(SyncCallPolicy(limits=LIMITS), duration=SLOW).inline


def test_a_method_that_sleeps_uses_no_cpu_but_stays_on_threads() -> None:
    policy = SyncCallPolicy(limits=LIMITS)
    for _ in range(10):
        policy.record(SLOW, False, 0.0, cpu_s=0.00001)
    assert not policy.inline


def test_waits_for_the_gil_on_threads_do_not_keep_a_short_method_there() -> None:
    policy = SyncCallPolicy(limits=LIMITS)
    for wall in (0.004, 0.0002, 0.006, 0.005):  # busy threads: the wall time is mostly GIL waits
        policy.record(wall, False, 0.0, cpu_s=0.0001)
    assert policy.inline


def test_one_long_inline_call_demotes_at_once_and_backs_off_doubling() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    policy.record(STALL, True, 10.0)
    assert not policy.inline
    assert policy.blocked_until == 11.0
    for _ in range(20):  # fast again, but within the backoff: still on threads
        policy.record(FAST, False, 10.5)
    assert not policy.inline
    policy.record(FAST, False, 11.0)  # the re-probe after the backoff
    assert policy.inline
    policy.record(STALL, True, 20.0)
    assert policy.blocked_until == 22.0, "the second demotion waits twice as long"


def test_the_backoff_is_capped() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    for round_ in range(10):
        now = 100.0 * round_
        policy.record(SLOW, True, now)
        for _ in range(30):
            policy.record(FAST, False, now + 50.0)
    assert policy.blocked_until - 900.0 == LIMITS.max_backoff_s


def test_a_rare_stall_is_forgiven() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    policy.record(STALL, True, 0.0)
    warmed(policy, now=2.0)
    policy.record(STALL, True, 10.0)
    assert policy.blocked_until == 12.0  # the second demotion soon after: twice as long
    warmed(policy, now=20.0)
    policy.record(STALL, True, 500.0)  # long after the last one: back to the first backoff
    assert policy.blocked_until == 501.0
    warmed(policy, now=600.0)
    for _ in range(LIMITS.forgive_after_calls):
        policy.record(FAST, True, 601.0)
    policy.record(STALL, True, 601.0)  # soon, but after many calls inline: forgiven too
    assert policy.blocked_until == 602.0


def test_a_long_stall_keeps_the_method_on_threads_in_proportion() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    policy.record(0.05, True, 0.0)  # a 50 ms stall: 5 s on threads at a 1% stall share
    assert policy.blocked_until == 5.0


def test_a_method_that_creeps_over_the_threshold_moves_back_to_threads() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    for _ in range(30):
        policy.record(0.002, True, 1.0)  # 2 ms: not a stall, but not short either
        if not policy.inline:
            break
    assert not policy.inline


def test_a_method_that_waits_on_handles_is_pinned_to_threads() -> None:
    policy = warmed(SyncCallPolicy(limits=LIMITS))
    policy.pin_thread()
    warmed(policy, now=1000.0)
    assert not policy.inline


@pytest.mark.parametrize(("mode", "inline"), [("thread", False), ("inline", True)])
def test_a_forced_mode_ignores_durations(mode: Any, inline: bool) -> None:
    policy = SyncCallPolicy(mode, LIMITS)
    assert policy.inline is inline
    policy.record(SLOW, inline, 0.0)
    warmed(policy)
    assert policy.inline is inline


def test_markers_on_a_method_a_class_or_a_deployment() -> None:
    class Plain:
        def f(self) -> None: ...

        @sk.threaded
        def g(self) -> None: ...

    @sk.inline
    class Tiny:
        def f(self) -> None: ...

    @sk.threaded
    @sk.deployment
    class Marked:
        def f(self) -> None: ...

    assert sync_mode(Plain.f, Plain) == "auto"
    assert sync_mode(Plain.g, Plain) == "thread"
    assert sync_mode(Tiny.f, Tiny) == "inline"
    assert sync_mode(Marked.target.f, Marked.target) == "thread"


_request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")


class Stage:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def step(self, x: int) -> dict[str, Any]:
        self.threads.append(threading.current_thread().name)
        seen = _request.get()
        _request.set("changed by the method")  # must not leak into the caller's context
        return {"x": x, "replica": sk.replica_context().replica_id, "request": seen}

    def slow(self) -> str:
        time.sleep(SLOW)
        return threading.current_thread().name


async def test_a_short_method_moves_inline_with_the_same_context() -> None:
    replica = Replica(ReplicaContext("Stage", "Stage#0"), Stage, is_function=False)
    await replica.start((), {})
    _request.set("req-1")
    for x in range(200):  # bounded: a busy machine can make a few calls look slow
        answer = await replica.call("step", (x,), {})
        assert answer == {"x": x, "replica": "Stage#0", "request": "req-1"}
        assert _request.get() == "req-1"
        if replica.instance.threads[-1] == threading.current_thread().name:
            break
    threads = replica.instance.threads
    assert threads[0].startswith("servekit-replica"), "the first calls are measured on a thread"
    assert threads[-1] == threading.current_thread().name, "then it runs inline on the loop"


async def test_a_blocking_method_never_runs_on_the_loop() -> None:
    replica = Replica(ReplicaContext("Stage", "Stage#0"), Stage, is_function=False)
    await replica.start((), {})
    loop_thread = threading.current_thread().name
    threads = [await replica.call("slow", (), {}) for _ in range(5)]
    assert loop_thread not in threads


async def test_a_cancelled_sync_call_is_abandoned_until_its_thread_returns() -> None:
    started, gate = threading.Event(), threading.Event()

    class Gated:
        def wait(self) -> str:
            started.set()
            gate.wait(10)
            return "done"

    replica = Replica(ReplicaContext("Gated", "Gated#0"), Gated, is_function=False)
    await replica.start((), {})
    changes: list[int] = []
    replica.watch_abandoned(lambda: changes.append(replica.abandoned))
    call = asyncio.ensure_future(replica.call("wait", (), {}))
    await until(started.is_set)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert replica.abandoned == 1
    gate.set()
    await until(lambda: replica.abandoned == 0)
    assert changes == [1, 0]
    assert replica.abandoned_total == 1


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


@sk.deployment
class Leaf:
    def value(self, x: int) -> int:
        return x + 1


@sk.deployment
class Waiter:
    def __init__(self, leaf: sk.DeploymentHandle) -> None:
        self.leaf = leaf
        self.calls = 0

    def always(self, x: int) -> int:
        return int(self.leaf.value(x).result(timeout=10))

    def sometimes(self, x: int, wait: bool = False) -> Any:
        if wait:
            return int(self.leaf.value(x).result(timeout=10))
        return threading.current_thread().name


def test_a_method_that_waits_on_handles_keeps_working() -> None:
    with sk.run(Waiter.bind(Leaf.bind())) as app:
        assert [app.always(x).result(timeout=10) for x in range(30)] == [x + 1 for x in range(30)]


def test_a_method_that_waits_on_a_handle_inline_fails_once_then_runs_on_threads() -> None:
    with sk.run(Waiter.bind(Leaf.bind())) as app:
        for _ in range(200):  # bounded: until it has moved inline (off the worker threads)
            if not app.sometimes(0).result(timeout=10).startswith("servekit-replica"):
                break
        with pytest.raises(
            RuntimeError, match=r"sometimes\(\) waited on a handle call .* @servekit.threaded"
        ):
            app.sometimes(1, wait=True).result(timeout=10)
        assert app.sometimes(2, wait=True).result(timeout=10) == 3
        assert app.sometimes(0).result(timeout=10).startswith("servekit-replica")
