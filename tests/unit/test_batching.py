"""`@batch`: lists in, one result per caller out, and a loop that survives anything a caller does."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import servekit as sk
from servekit._replica.batching import batched_state


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
