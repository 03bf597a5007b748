"""`@batch`: lists in, one result per caller out, and a loop that survives anything a caller does."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import servekit as sk
from servekit._replica.arrivals import Incoming, arrived, incoming
from servekit._replica.batch_policy import (
    BACKLOG_LAG,
    HOLD_GAPS,
    ArrivalGap,
    BatchDecision,
    BatchInput,
    BatchLimits,
    CostEstimate,
    CostModel,
    decide,
)
from servekit._replica.batching import BatchQueue, batched_state, set_default_wait, with_overrides
from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit.errors import DeploymentOptionError


class Doubler:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    @sk.batch(max_batch_size=4, max_wait_ms=20)
    async def double(self, xs: list[int]) -> list[Any]:
        self.sizes.append(len(xs))
        return [ValueError(f"bad {x}") if x < 0 else x * 2 for x in xs]


async def test_each_caller_gets_its_own_result() -> None:
    doubler = Doubler()
    results = await asyncio.gather(*(doubler.double(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]


async def test_a_batch_never_exceeds_max_batch_size() -> None:
    doubler = Doubler()
    await asyncio.gather(*(doubler.double(i) for i in range(11)))
    assert max(doubler.sizes) == 4
    assert sum(doubler.sizes) == 11


async def test_an_exception_for_one_item_fails_only_that_item() -> None:
    doubler = Doubler()
    results = await asyncio.gather(
        doubler.double(1), doubler.double(-1), doubler.double(3), return_exceptions=True
    )
    assert results[0] == 2
    assert results[2] == 6
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad -1"


class Flaky:
    @sk.batch(max_batch_size=2, max_wait_ms=50)
    async def run(self, xs: list[int]) -> list[int]:
        if 13 in xs:
            raise RuntimeError("unlucky batch")
        return xs


async def test_an_exception_for_the_whole_call_fails_only_that_batch() -> None:
    flaky = Flaky()
    first = asyncio.gather(flaky.run(13), flaky.run(1), return_exceptions=True)
    second = asyncio.gather(flaky.run(2), flaky.run(3), return_exceptions=True)
    bad, good = await first, await second
    assert all(isinstance(r, RuntimeError) for r in bad)
    assert good == [2, 3]


class Wrong:
    @sk.batch(max_batch_size=3, max_wait_ms=5)
    async def run(self, xs: list[int]) -> list[int]:
        return xs[:1]


async def test_a_result_list_of_the_wrong_length_is_a_clear_error() -> None:
    wrong = Wrong()
    results = await asyncio.gather(wrong.run(1), wrong.run(2), return_exceptions=True)
    assert all(isinstance(r, TypeError) for r in results)
    assert "one result per input: got 1 for 2 inputs" in str(results[0])


class Slow:
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    @sk.batch(max_batch_size=8, max_wait_ms=30)
    async def run(self, xs: list[int]) -> list[int]:
        self.seen.append(xs)
        await asyncio.sleep(0.01)
        return xs


async def test_a_cancelled_caller_is_left_out_and_the_loop_keeps_going() -> None:
    slow = Slow()
    doomed = asyncio.ensure_future(slow.run(99))
    kept = asyncio.ensure_future(slow.run(1))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == 1
    assert all(99 not in batch for batch in slow.seen)
    assert await slow.run(2) == 2


async def test_a_timed_out_caller_does_not_stall_the_loop() -> None:
    slow = Slow()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow.run(5), timeout=0.001)
    assert await asyncio.gather(slow.run(6), slow.run(7)) == [6, 7]


class SyncModel:
    def __init__(self) -> None:
        self.threads: set[str] = set()

    @sk.batch(max_batch_size=4, max_wait_ms=10)
    def predict(self, xs: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        return [x + 1 for x in xs]


async def test_sync_batch_functions_run_off_the_event_loop() -> None:
    model = SyncModel()
    assert await asyncio.gather(*(model.predict(i) for i in range(5))) == [1, 2, 3, 4, 5]
    assert threading.current_thread().name not in model.threads


async def test_batch_stats_count_batches_and_sizes() -> None:
    doubler = Doubler()
    await asyncio.gather(*(doubler.double(i) for i in range(6)))
    state = batched_state(Doubler.double)
    assert state is not None
    queue = state.existing_queue(doubler)
    assert queue is not None
    stats = queue.stats.to_dict()
    assert stats["items"] == 6
    assert stats["batches"] == len(doubler.sizes)
    assert stats["mean_batch_size"] == pytest.approx(6 / len(doubler.sizes), abs=1e-3)


@sk.batch(max_batch_size=4, max_wait_ms=10)
async def add_one(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]


async def test_plain_functions_can_be_batched() -> None:
    assert await asyncio.gather(add_one(1), add_one(2)) == [2, 3]


class Keyword:
    @sk.batch(max_batch_size=4, max_wait_ms=10)
    async def scale(self, xs: list[int], factor: list[int]) -> list[int]:
        return [x * f for x, f in zip(xs, factor, strict=True)]


async def test_several_arguments_each_become_a_list() -> None:
    k = Keyword()
    assert await asyncio.gather(k.scale(2, factor=3), k.scale(4, factor=5)) == [6, 20]


class Streamer:
    @sk.batch(max_batch_size=4, max_wait_ms=20)
    async def count(self, limits: list[int]) -> Any:
        for step in range(max(limits)):
            yield [StopIteration() if step >= limit else f"{limit}:{step}" for limit in limits]


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def test_batched_generators_give_each_caller_its_own_stream() -> None:
    streamer = Streamer()
    short, long = await asyncio.gather(collect(streamer.count(1)), collect(streamer.count(3)))
    assert short == ["1:0"]
    assert long == ["3:0", "3:1", "3:2"]


class SyncStreamer:
    @sk.batch(max_batch_size=4, max_wait_ms=10)
    def words(self, texts: list[str]) -> Any:
        for position in range(2):
            yield [text.split()[position] for text in texts]


async def test_sync_batched_generators_stream_too() -> None:
    streamer = SyncStreamer()
    results = await asyncio.gather(collect(streamer.words("a b")), collect(streamer.words("c d")))
    assert results == [["a", "b"], ["c", "d"]]


# -- the adaptive policy: pure decisions over a fake clock -------------------------------------

LIMITS = BatchLimits(max_batch_size=32, max_wait_s=0.005)
COST = CostEstimate(fixed_s=0.00036, per_item_s=0.000027)


def state(**changes: Any) -> BatchInput:
    base: dict[str, Any] = {
        "now": 10.0,
        "queued": 1,
        "oldest_arrival": 10.0,
        "last_arrival": 10.0,
        "running": 0,
        "limits": LIMITS,
        "cost": COST,
        "arrival_gap_s": 0.0001,
    }
    return BatchInput(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "dispatch", "reason"),
    [
        ({"queued": 0}, False, "empty"),
        ({"running": 1}, False, "busy"),
        ({"running": 1, "queued": 40}, False, "busy"),
        ({"running": 1, "limits": BatchLimits(32, 0.005, max_concurrent_batches=2)}, False, "holding"),
        ({"queued": 32}, True, "full"),
        ({"now": 10.005}, True, "max_wait"),
        ({"cost": None}, True, "nothing learned"),
        ({"arrival_gap_s": None}, True, "nothing learned"),
        ({"arrival_gap_s": 0.001}, True, "too sparse"),
        ({"arrival_gap_s": 0.0001}, False, "holding"),
        ({"now": 10.0004, "queued": 3}, True, "the queue stopped growing"),
        ({"now": 10.005, "room_since": 10.004, "last_arrival": 10.005}, False, "holding"),
        ({"now": 10.0091, "room_since": 10.004, "last_arrival": 10.009}, True, "max_wait"),
        ({"limits": BatchLimits(32, 0.0)}, True, "max_wait"),
    ],
)
def test_policy_decisions(changes: dict[str, Any], dispatch: bool, reason: str) -> None:
    decision = decide(state(**changes))
    assert decision.dispatch is dispatch
    assert reason in decision.reason


FILL = BatchLimits(max_batch_size=32, max_wait_s=0.005, wait="fill")


@pytest.mark.parametrize(
    ("changes", "dispatch", "reason"),
    [
        ({"arrival_gap_s": None}, True, "nothing learned"),  # a lone caller pays no window
        ({"arrival_gap_s": 0.005}, True, "too sparse to fill"),
        ({"arrival_gap_s": 0.004, "cost": None}, False, "filling the window"),
        ({"arrival_gap_s": 0.001}, False, "filling the window"),  # adaptive would go: gap > saving
        ({"arrival_gap_s": 0.009, "last_batch_size": 4}, False, "filling the window"),  # calls overlap
        ({"arrival_gap_s": None, "last_batch_size": 1}, True, "nothing learned"),
        ({"now": 10.005}, True, "max_wait"),
        ({"queued": 32}, True, "full"),
        ({"running": 1}, False, "busy"),
    ],
)
def test_fill_mode_holds_each_batch_for_its_whole_window_under_load(
    changes: dict[str, Any], dispatch: bool, reason: str
) -> None:
    decision = decide(state(limits=FILL, **changes))
    assert decision.dispatch is dispatch
    assert reason in decision.reason
    if not dispatch and reason == "filling the window":
        assert decision.hold_until == pytest.approx(10.005)  # the window's end, not a few gaps on


def test_the_wait_mode_is_validated_and_the_process_default_fills_unset_ones() -> None:
    with pytest.raises(DeploymentOptionError, match="wait='always'"):
        sk.batch(wait="always")
    with pytest.raises(DeploymentOptionError, match="'adaptive', 'fill'"):
        set_default_wait("always")

    @sk.batch(max_batch_size=4)
    async def unset(xs: list[int]) -> list[int]:
        return xs

    @sk.batch(max_batch_size=4, wait="adaptive")
    async def chosen(xs: list[int]) -> list[int]:
        return xs

    unset_state, chosen_state = batched_state(unset), batched_state(chosen)
    assert unset_state is not None
    assert chosen_state is not None
    assert unset_state.limits_for(None).wait == "adaptive"  # the local runtime's default
    try:
        set_default_wait("fill")  # what the Ray backend's replicas do
        assert unset_state.limits_for(None).wait == "fill"
        assert chosen_state.limits_for(None).wait == "adaptive"  # the decorator's choice wins
        assert with_overrides(chosen_state.limits, sk.BatchOptions(wait="fill")).wait == "fill"
    finally:
        set_default_wait("adaptive")


def test_a_lone_caller_with_sparse_arrivals_is_dispatched_at_once() -> None:
    # one caller at a time: the next call comes after this one's batch, so gaps exceed a batch's cost
    decision = decide(state(arrival_gap_s=COST.fixed_s + COST.per_item_s))
    assert decision.dispatch


def test_a_hold_lasts_while_the_queue_keeps_growing() -> None:
    decision = decide(state(queued=5, oldest_arrival=9.999, last_arrival=10.0, arrival_gap_s=0.00002))
    assert not decision.dispatch
    assert decision.hold_until == pytest.approx(10.0 + HOLD_GAPS * 0.00002)


def test_a_batch_that_blocked_the_loop_does_not_count_as_silence() -> None:
    # the last item arrived at 10.0, then a batch ran until 10.003: nobody could arrive meanwhile,
    # so the queue holds for arrivals from 10.003 on instead of dispatching its few items at once
    after_batch = state(now=10.003, queued=3, oldest_arrival=10.0, last_arrival=10.0, room_since=10.003)
    decision = decide(after_batch)
    assert not decision.dispatch
    assert decision.hold_until == pytest.approx(
        10.003 + min(COST.fixed_s - COST.per_item_s, HOLD_GAPS * 0.0001)
    )


def test_a_hold_lasts_at_most_one_fixed_cost_after_the_last_arrival() -> None:
    decision = decide(state(queued=5, oldest_arrival=9.999, last_arrival=10.0, arrival_gap_s=0.0003))
    assert not decision.dispatch
    assert decision.hold_until == pytest.approx(10.0 + COST.fixed_s - COST.per_item_s)


def test_time_spent_behind_a_running_batch_is_not_part_of_the_window() -> None:
    # the oldest item queued at 10.0 while a batch ran until 10.004 (say, blocking the loop):
    # its window runs from 10.004, so arrivals that the running batch held back still join
    held_back = state(now=10.006, queued=20, oldest_arrival=10.0, last_arrival=10.006, room_since=10.004)
    decision = decide(held_back)
    assert not decision.dispatch
    assert decision.hold_until is not None
    assert decision.hold_until <= 10.004 + LIMITS.max_wait_s


@pytest.mark.parametrize("oldest", [9.996, 9.9951])
def test_a_hold_never_passes_the_oldest_items_max_wait(oldest: float) -> None:
    decision = decide(state(queued=5, oldest_arrival=oldest))
    assert decision.hold_until is not None
    assert decision.hold_until <= oldest + LIMITS.max_wait_s


def test_the_cost_model_learns_fixed_and_per_item_cost() -> None:
    model = CostModel()
    for size in [1, 32, 8, 16, 4, 32, 1, 24] * 5:
        model.observe(size, 0.00036 + 0.000027 * size)
    assert model.estimate is not None
    assert model.estimate.fixed_s == pytest.approx(0.00036, rel=1e-6)
    assert model.estimate.per_item_s == pytest.approx(0.000027, rel=1e-6)


def test_with_one_batch_size_the_cost_model_counts_it_all_as_fixed() -> None:
    model = CostModel()
    for _ in range(5):
        model.observe(1, 0.0004)
    assert model.estimate == CostEstimate(fixed_s=pytest.approx(0.0004), per_item_s=0.0)


def test_silent_holds_lift_the_arrival_gap_past_what_pays_for_a_wait() -> None:
    gaps = ArrivalGap()
    for _ in range(20):
        gaps.observe(0.0001)
    saving = COST.fixed_s - COST.per_item_s
    silences = 0
    while decide(state(arrival_gap_s=gaps.typical_s)).hold_until is not None:
        gaps.observe_silence(saving)
        silences += 1
    assert silences <= 5


def test_a_silence_between_bursts_does_not_stop_holds_inside_the_next_burst() -> None:
    """Calls through a busy proxy arrive in bursts (here 6 calls 0.2 ms apart, then 40 ms of
    nothing); the batcher must still hold for the rest of a burst (a mean gap would not)."""
    gaps = ArrivalGap()
    for _ in range(10):
        for _ in range(5):
            gaps.observe(0.0002)
        gaps.observe_silence(0.040)
    decision = decide(state(queued=2, arrival_gap_s=gaps.typical_s))
    assert gaps.typical_s == pytest.approx(0.0002)
    assert decision.hold_until is not None, decision.reason


def test_a_backlogged_event_loop_holds_until_the_window_ends() -> None:
    """Calls are in progress on a loop that runs decisions late: the batch waits for them,
    even with nothing learned and sparse gaps (which alone would dispatch at once)."""
    lag = BACKLOG_LAG * LIMITS.max_wait_s
    for learned in ({}, {"cost": None, "arrival_gap_s": None}, {"arrival_gap_s": 1.0}):
        decision = decide(state(loop_lag_s=lag, **learned))
        assert decision == BatchDecision(False, 10.0 + LIMITS.max_wait_s, "the event loop is backlogged")
    assert decide(state(loop_lag_s=lag / 2, cost=None)).dispatch  # a prompt loop: no window paid


def test_a_backlogged_loop_still_dispatches_full_batches_and_at_the_window() -> None:
    lag = LIMITS.max_wait_s
    assert decide(state(loop_lag_s=lag, queued=LIMITS.max_batch_size)).reason == "full"
    assert decide(state(loop_lag_s=lag, now=10.0 + LIMITS.max_wait_s)).reason == "max_wait"


def test_calls_on_their_way_hold_the_batch_until_the_window_ends() -> None:
    decision = decide(state(on_their_way=3, cost=None))
    assert decision == BatchDecision(False, 10.0 + LIMITS.max_wait_s, "calls are on their way")
    assert decide(state(on_their_way=3, queued=LIMITS.max_batch_size)).reason == "full"


def test_a_counted_call_is_on_its_way_until_it_reaches_a_queue_or_leaves() -> None:
    calls = Incoming()
    with incoming(calls):
        assert calls.count == 1
        with incoming(calls):
            assert calls.count == 2
            assert arrived() is calls
            assert calls.count == 1
            assert arrived() is calls  # arriving twice counts once
            assert calls.count == 1
        assert calls.count == 1  # the first call never reached a queue: it leaves uncounted
    assert calls.count == 0
    assert arrived() is None


async def test_a_forming_batch_waits_for_counted_calls_and_goes_once_all_are_in() -> None:
    """Two counted calls: the first queues while the second is still on its way (fetching its
    body, say); the batch holds for it, then both go together, well before the window."""
    sizes: list[int] = []

    async def double(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [2 * x for x in xs]

    queue = BatchQueue(double, BatchLimits(max_batch_size=8, max_wait_s=60.0), "double")
    calls = Incoming()
    second_may_go = asyncio.Event()

    async def call(x: int, gate: asyncio.Event | None) -> int:
        with incoming(calls):
            if gate is not None:
                await gate.wait()
            result: int = await queue.submit((x,), {})
            return result

    first = asyncio.ensure_future(call(1, None))
    second = asyncio.ensure_future(call(2, second_may_go))
    for _ in range(5):
        await asyncio.sleep(0)
    assert queue.queued == 1
    assert not sizes
    second_may_go.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), timeout=10) == [2, 4]
    assert sizes == [2]


# -- the queue: dispatch order, growth under load, overlap, live options -------------------------


class Gated:
    """A batched method that waits for the test to open its gate; records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.running = 0
        self.most_running = 0

    @sk.batch(max_batch_size=32, max_wait_ms=60_000)
    async def run(self, xs: list[int]) -> list[int]:
        self.batches.append(xs)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await self.gate.wait()
        self.running -= 1
        return xs


async def turns(n: int = 5) -> None:
    """Let the event loop run `n` iterations (no clock involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


def queue_of(owner: Any, method: Any) -> BatchQueue:
    state = batched_state(method)
    assert state is not None
    queue = state.existing_queue(owner)
    assert queue is not None
    return queue


async def test_a_lone_caller_is_dispatched_at_once_not_after_max_wait() -> None:
    model = Gated()
    model.gate.set()
    call = asyncio.ensure_future(model.run(7))
    await turns()  # with a 60 s max_wait, only an immediate dispatch has run the batch by now
    assert model.batches == [[7]]
    assert await call == 7
    assert queue_of(model, Gated.run).status()["decision"] == "nothing learned"


async def test_items_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    model = Gated()
    first = asyncio.ensure_future(model.run(0))
    await turns()
    assert model.batches == [[0]]
    rest = [asyncio.ensure_future(model.run(i)) for i in range(1, 21)]
    await turns()
    assert model.batches == [[0]], "the model is busy: arrivals wait"
    status = queue_of(model, Gated.run).status()
    assert (status["running"], status["queued"]) == (1, 20)
    model.gate.set()
    assert await asyncio.gather(first, *rest) == list(range(21))
    assert model.batches == [[0], list(range(1, 21))]


async def test_max_concurrent_batches_lets_batches_overlap() -> None:
    model = Gated()
    state = batched_state(Gated.run)
    assert state is not None
    state.configure(model, BatchLimits(max_batch_size=2, max_wait_s=60, max_concurrent_batches=2))
    calls = [asyncio.ensure_future(model.run(i)) for i in range(6)]
    await turns()
    assert model.batches == [[0, 1], [2, 3]]
    assert model.running == 2
    model.gate.set()
    assert await asyncio.gather(*calls) == list(range(6))
    assert model.most_running == 2
    assert queue_of(model, Gated.run).status()["options"]["max_concurrent_batches"] == 2


async def test_one_batch_at_a_time_by_default() -> None:
    model = Gated()
    calls = [asyncio.ensure_future(model.run(i)) for i in range(3)]
    await turns()
    model.gate.set()
    await asyncio.gather(*calls)
    assert model.most_running == 1


async def test_new_options_apply_to_items_already_waiting() -> None:
    model = Gated()
    first = asyncio.ensure_future(model.run(0))
    await turns()
    rest = [asyncio.ensure_future(model.run(i)) for i in range(1, 11)]
    await turns()
    state = batched_state(Gated.run)
    assert state is not None
    state.configure(model, BatchLimits(max_batch_size=4, max_wait_s=0))
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(batch) for batch in model.batches] == [1, 4, 4, 2]


async def test_a_busy_queue_fills_batches_to_max_batch_size() -> None:
    model = Gated()
    model.gate.set()
    await asyncio.gather(*(model.run(i) for i in range(100)))
    sizes = [len(batch) for batch in model.batches]
    assert sizes == [32, 32, 32, 4]


def test_max_concurrent_batches_must_be_a_positive_int() -> None:
    with pytest.raises(DeploymentOptionError, match=r"max_concurrent_batches=0 must be an int >= 1"):
        sk.batch(max_concurrent_batches=0)


def test_deployment_batching_overrides_are_validated() -> None:
    with pytest.raises(DeploymentOptionError, match=r"batching.predict.max_wait_ms=-1 is invalid"):
        Doubler_deployment.options(batching={"predict": {"max_wait_ms": -1}})
    with pytest.raises(DeploymentOptionError, match=r"unknown option 'batching.predict.max_batch'"):
        Doubler_deployment.options(batching={"predict": {"max_batch": 4}})


Doubler_deployment = sk.deployment(Doubler)


async def test_a_replica_refuses_batching_for_a_method_that_is_not_batched() -> None:
    replica = Replica(ReplicaContext("Doubler", "Doubler#0", "cpu", ()), Doubler, is_function=False)
    await replica.start((), {})
    with pytest.raises(DeploymentOptionError, match=r"'__init__', which is not a @batch method"):
        await replica.configure_batching({"__init__": sk.BatchOptions(max_batch_size=2)})
    await replica.configure_batching({"double": sk.BatchOptions(max_batch_size=2)})
    instance = replica.instance
    await asyncio.gather(*(instance.double(i) for i in range(5)))
    assert max(instance.sizes) == 2
    replica.stop()
