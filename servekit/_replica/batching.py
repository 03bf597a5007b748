"""Dynamic batching: `@batch` turns per-item calls into list calls, one queue per method per replica.

Each caller passes one item and awaits one result. A `BatchQueue` collects items and calls the
user's function with lists, when `batch_policy.decide` says so: at once when the model is free
and nothing else waits, and holding for more items only while that pays, up to `max_batch_size`
items and `max_wait_ms` for the oldest. At most `max_concurrent_batches` batches run at a time;
items arriving meanwhile form the next. A deployment's `batching` option overrides the
decorator's values per replica (`BatchedFunction.configure`). While tracing, each batch runs in
a "batch" span linked to its items' spans, and each item's wait for its batch is a span too.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.arrivals import Incoming, arrived
from servekit._replica.batch_policy import (
    HOLD_GAPS,
    WAIT_MODES,
    ArrivalGap,
    BatchInput,
    BatchLimits,
    CostModel,
    decide,
)
from servekit._replica.context import current_replica
from servekit._spec.config import BatchOptions
from servekit._telemetry import tracing
from servekit._telemetry.metrics import BATCH_WAIT_BUCKETS_S, Buckets
from servekit.errors import DeploymentOptionError, DeploymentUnavailableError

logger = logging.getLogger("servekit.batching")

BATCH_ATTR = "__servekit_batch__"
END = object()


@dataclass
class BatchStats:
    """Counts of batches formed by one queue; `sizes[n]` is how many batches had n items, `waits`
    how long items waited for their batch to start (seconds)."""

    batches: int = 0
    items: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    waits: Buckets = field(default_factory=lambda: Buckets(BATCH_WAIT_BUCKETS_S))

    def record(self, size: int) -> None:
        """Count one batch of `size` items."""
        self.batches += 1
        self.items += size
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def record_waits(self, started: float, arrivals: list[float]) -> None:
        """Count how long each item (arrived at `arrivals`) waited for its batch, started at `started`."""
        observe = self.waits.observe
        for arrival in arrivals:
            observe(started - arrival)

    @property
    def mean_batch_size(self) -> float:
        """Average items per batch so far (0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.mean_batch_size, 3),
            "sizes": dict(sorted(self.sizes.items())),
            "mean_wait_ms": round(1000 * self.waits.sum / self.items, 4) if self.items else 0.0,
        }


@dataclass
class _Item:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any] | None = None
    stream: asyncio.Queue[Any] | None = None
    closed: bool = False
    arrived: float = 0.0
    trace: Any = None
    """While tracing: (the caller's sampled span context, its arrival in ns), else None."""

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled, timed out or stopped reading)."""
        return self.closed or (self.future is not None and self.future.done())


class BatchQueue:
    """Collects single calls into batches for one function on one event loop.

    `submit` queues an item; `batch_policy.decide` says when a batch starts. Each batch runs as
    its own task, at most `max_concurrent_batches` at a time; its duration teaches the cost
    model, and gaps between queued arrivals the arrival estimate.
    """

    def __init__(self, func: Callable[..., Any], limits: BatchLimits, name: str) -> None:
        self._func = func
        self._limits = _resolved(limits)
        self._name = name
        self._streaming = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Item] = deque()
        self._running = 0
        self._batches: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deciding = False
        self._last_arrival = 0.0
        self._finished = 0
        """Batches finished so far: a gap between arrivals is measured only within one count,
        since a batch that blocks the loop holds back every arrival behind it."""
        self._finished_at_last_arrival = 0
        self._room_since = 0.0
        self._last_size = 0
        self._closed = False
        self._reason = "idle"
        self.costs = CostModel()
        self.gaps = ArrivalGap()
        self._loop_lag_s = 0.0
        self._reserved = 0
        self._incoming: Incoming | None = None
        """Calls counted on their way to this queue by the replica's front end, if it counts."""
        """Queued items that started batches will take when their tasks first run."""
        self.stats = BatchStats()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the queue runs on."""
        return self._loop

    @property
    def limits(self) -> BatchLimits:
        """The options the queue runs with now."""
        return self._limits

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Batches executing now."""
        return self._running

    def configure(self, limits: BatchLimits) -> None:
        """Run with `limits` from now on (waiting items and running batches are kept)."""
        self._limits = _resolved(limits)
        self._decide_soon()

    def status(self) -> dict[str, Any]:
        """JSON-ready stats, options, what was learned and the last decision."""
        cost, gap = self.costs.estimate, self.gaps.typical_s
        return {
            **self.stats.to_dict(),
            "queued": len(self._pending),
            "running": self._running,
            "options": self._limits.to_dict(),
            "fixed_cost_ms": None if cost is None else round(cost.fixed_s * 1000, 4),
            "per_item_cost_ms": None if cost is None else round(cost.per_item_s * 1000, 4),
            "arrival_gap_ms": None if gap is None else round(gap * 1000, 4),
            "decision": self._reason,
            "loop_lag_ms": round(self._loop_lag_s * 1000, 4),
        }

    async def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Queue one item and wait for its result."""
        self._incoming = arrived() or self._incoming
        item = _Item(args, kwargs, future=self._loop.create_future(), arrived=_now())
        if tracing.active() is not None:
            item.trace = _item_trace()
        self._enqueue(item)
        assert item.future is not None
        return await item.future

    async def submit_stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Queue one item of a batched generator and yield its share of each step."""
        self._incoming = arrived() or self._incoming
        item = _Item(args, kwargs, stream=asyncio.Queue(), arrived=_now())
        if tracing.active() is not None:
            item.trace = _item_trace()
        self._enqueue(item)
        assert item.stream is not None
        try:
            while (chunk := await item.stream.get()) is not END:
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
        finally:
            item.closed = True

    def close(self) -> None:
        """Stop forming batches, cancel running ones and fail every waiting item."""
        self._closed = True
        self._cancel_timer()
        for task in list(self._batches):
            task.cancel()
        error = DeploymentUnavailableError(f"batched method {self._name!r} is shutting down")
        while self._pending:
            _fail(self._pending.popleft(), error)

    def _enqueue(self, item: _Item) -> None:
        if self._closed:
            raise DeploymentUnavailableError(f"batched method {self._name!r} is shut down")
        pending = self._pending
        if pending and self._finished == self._finished_at_last_arrival:
            self.gaps.observe(item.arrived - self._last_arrival)
        self._last_arrival = item.arrived
        self._finished_at_last_arrival = self._finished
        pending.append(item)
        if self._running < self._limits.max_concurrent_batches:
            if len(pending) >= self._limits.max_batch_size and not self._deciding:
                self._decide()  # a full batch goes now
            elif self._timer is None or (self._incoming is not None and self._incoming.count == 0):
                self._decide_soon()  # (a hold for calls on their way ends once all are in)

    def _decide_soon(self) -> None:
        """Decide once this loop iteration's arrivals are in (so simultaneous calls share a batch)."""
        if not self._deciding:
            self._deciding = True
            self._loop.call_soon(self._decide, _now())

    def _decide(self, scheduled: float | None = None) -> None:
        self._deciding = False
        if scheduled is not None:  # how late the loop ran it: its backlog of other work
            self._loop_lag_s = _now() - scheduled
        try:
            while not self._closed and len(self._pending) > self._reserved:
                decision = decide(self._input(_now()))
                self._reason = decision.reason
                if not decision.dispatch:
                    if decision.hold_until is not None:
                        self._hold(decision.hold_until)
                    return
                self._cancel_timer()
                self._start()
        except Exception:  # the queue must outlive a bug in a decision
            logger.exception("batching of %s failed to decide; dispatching what waits", self._name)
            self._start()

    def _input(self, now: float) -> BatchInput:
        return BatchInput(
            now=now,
            queued=len(self._pending) - self._reserved,
            oldest_arrival=self._pending[self._reserved].arrived,
            last_arrival=self._last_arrival,
            running=self._running,
            room_since=self._room_since,
            limits=self._limits,
            cost=self.costs.estimate,
            arrival_gap_s=self.gaps.typical_s,
            loop_lag_s=self._loop_lag_s,
            on_their_way=0 if self._incoming is None else self._incoming.count,
            last_batch_size=self._last_size,
        )

    def _hold(self, until: float) -> None:
        if self._timer is not None:
            if self._timer_at <= until:
                return  # fires earlier; the decision then holds again if it still pays
            self._timer.cancel()
        self._timer_at = until
        self._timer = self._loop.call_later(max(0.0, until - _now()), self._on_hold_end)

    def _on_hold_end(self) -> None:
        self._timer = None
        cost, gap = self.costs.estimate, self.gaps.typical_s
        silent = _now() - self._last_arrival
        if self._limits.wait == "fill":  # a whole window without a new arrival: arrivals are sparse
            expected: float | None = self._limits.max_wait_s
        else:
            saving = None if cost is None else cost.fixed_s - cost.per_item_s
            expected = None if saving is None or gap is None else min(saving, HOLD_GAPS * gap)
        if expected is not None and self._pending and silent >= expected:
            self.gaps.observe_silence(silent)
        self._decide()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        pending, limit = self._pending, self._limits.max_batch_size
        while pending and len(batch) < limit:
            item = pending.popleft()
            if not item.abandoned:
                batch.append(item)
        return batch

    def _start(self) -> None:
        """Start a batch of what waits. Its task takes the items when it first runs, so calls
        that reach the queue in between (the loop's backlog, behind this decision) join it."""
        reserved = min(len(self._pending) - self._reserved, self._limits.max_batch_size)
        self._reserved += reserved
        self._running += 1
        task = self._loop.create_task(self._run(reserved), name=f"servekit-batch-{self._name}")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run(self, reserved: int) -> None:
        self._reserved -= reserved
        batch = self._take()
        if not batch:  # every caller left meanwhile
            self._running -= 1
            if not self._closed:
                self._decide()
            return
        started = _now()
        self.stats.record(len(batch))
        self.stats.record_waits(started, [item.arrived for item in batch])
        self._last_size = len(batch)
        try:
            await self._execute_traced(batch)
        except asyncio.CancelledError:
            error = DeploymentUnavailableError(f"batched method {self._name!r} is shutting down")
            for item in batch:
                _fail(item, error)
            raise
        except Exception:  # the queue must outlive any single batch
            logger.exception("batch of %s failed; continuing", self._name)
        finally:
            ended = _now()
            if self._running == self._limits.max_concurrent_batches:
                self._room_since = ended  # the queue had no room until now
            self._running -= 1
            self._finished += 1
            self.costs.observe(len(batch), ended - started)
            if not self._closed:
                self._decide()

    async def _execute_traced(self, batch: list[_Item]) -> None:
        """Run the batch, in a batch span while tracing when an item is sampled."""
        active = tracing.active()
        traced = [item.trace for item in batch if item.trace is not None] if active is not None else []
        if active is None or not traced:
            await self._execute(batch)
            return
        attributes: dict[str, str | int] = {"servekit.batch.size": len(batch), "servekit.method": self._name}
        with active.batch_span(f"batch {self._name}", traced, attributes):
            await self._execute(batch)

    async def _execute(self, batch: list[_Item]) -> None:
        try:
            args, kwargs = _transpose(batch)
        except TypeError as exc:
            for item in batch:
                _fail(item, exc)
            return
        if self._streaming:
            await self._execute_stream(batch, args, kwargs)
            return
        try:
            results = await _call(self._func, args, kwargs)
            _check_length(results, len(batch), self._name)
        except Exception as exc:
            for item in batch:
                _fail(item, exc)
            return
        for item, result in zip(batch, results, strict=True):
            _deliver(item, result)

    async def _execute_stream(self, batch: list[_Item], args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            async for step in _iterate(self._func, args, kwargs):
                _check_length(step, len(batch), self._name)
                for item, chunk in zip(batch, step, strict=True):
                    _stream_chunk(item, chunk)
                if all(item.abandoned for item in batch):
                    break
        except Exception as exc:
            for item in batch:
                _stream_chunk(item, exc)
        for item in batch:
            _stream_chunk(item, END)


def _item_trace() -> tuple[Any, int] | None:
    """The caller's span context if sampled, with the arrival time, for the batch's spans."""
    active = tracing.active()
    sampled = active.sampled() if active is not None else None
    return None if sampled is None else (sampled, time.time_ns())


def _now() -> float:
    """The clock of arrivals, holds and batch costs: `time.monotonic`, read afresh each time
    (uvloop's `loop.time()` is cached per loop iteration, which blurs sub-millisecond costs)."""
    return time.monotonic()


def _fail(item: _Item, error: BaseException) -> None:
    if item.future is not None and not item.future.done():
        item.future.set_exception(error)
    elif item.stream is not None and not item.closed:
        item.stream.put_nowait(error)
        item.stream.put_nowait(END)
        item.closed = True


def _deliver(item: _Item, result: Any) -> None:
    if item.future is None or item.future.done():
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)


def _stream_chunk(item: _Item, chunk: Any) -> None:
    if item.closed or item.stream is None:
        return
    if isinstance(chunk, StopIteration):
        chunk = END
    item.stream.put_nowait(chunk)
    if chunk is END or isinstance(chunk, BaseException):
        if chunk is not END:
            item.stream.put_nowait(END)
        item.closed = True


def _transpose(batch: list[_Item]) -> tuple[list[Any], dict[str, Any]]:
    first = batch[0]
    if any(len(i.args) != len(first.args) or i.kwargs.keys() != first.kwargs.keys() for i in batch):
        raise TypeError("every call of a batched method must pass the same arguments")
    args = [[item.args[n] for item in batch] for n in range(len(first.args))]
    kwargs = {key: [item.kwargs[key] for item in batch] for key in first.kwargs}
    return args, kwargs


def _check_length(results: Any, expected: int, name: str) -> None:
    if not hasattr(results, "__len__") or len(results) != expected:
        got = len(results) if hasattr(results, "__len__") else type(results).__name__
        raise TypeError(
            f"batched method {name!r} must return a list with one result per input: "
            f"got {got} for {expected} inputs"
        )


async def _call(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(func):
        return await func(*args, **kwargs)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(context.run, func, *args, **kwargs))


async def _iterate(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    if inspect.isasyncgenfunction(func):
        agen = func(*args, **kwargs)
        try:
            async for step in agen:
                yield step
        finally:
            await agen.aclose()
        return
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    generator: Generator[Any] = context.run(func, *args, **kwargs)
    try:
        while (step := await loop.run_in_executor(None, next_in_context, context, generator)) is not END:
            yield step
    finally:
        generator.close()


def with_overrides(limits: BatchLimits, options: BatchOptions) -> BatchLimits:
    """`limits` with the fields `options` sets replaced."""
    return BatchLimits(
        max_batch_size=options.max_batch_size or limits.max_batch_size,
        max_wait_s=limits.max_wait_s if options.max_wait_ms is None else options.max_wait_ms / 1000,
        max_concurrent_batches=options.max_concurrent_batches or limits.max_concurrent_batches,
        wait=options.wait or limits.wait,
    )


_default_wait = "adaptive"


def set_default_wait(mode: str) -> None:
    """The wait mode of batches whose decorator and deployment leave `wait` unset, in this process.

    A backend sets it where its replicas run (the Ray backend: ``"fill"``, since most of the
    queue sits in Ray Serve's proxy, out of the batcher's sight).
    """
    global _default_wait  # noqa: PLW0603  # one process-wide default, set once by the backend
    if mode not in WAIT_MODES:
        modes = ", ".join(map(repr, WAIT_MODES))
        raise DeploymentOptionError(f"batch wait mode {mode!r} must be one of {modes}")
    _default_wait = mode


def _resolved(limits: BatchLimits) -> BatchLimits:
    """`limits` with the process's default wait mode where it sets none."""
    return limits if limits.wait is not None else dataclasses.replace(limits, wait=_default_wait)


class BatchedFunction:
    """The state behind one `@batch`-decorated function: options and a queue per replica.

    Queues are keyed by the owner: the replica instance for methods, the current replica (or
    the event loop outside one) for plain functions. A queue is made on first use in the
    running loop; `configure` sets one owner's options (a deployment's overrides); the runtime
    calls `discard` when the replica stops, so nothing is stored on user objects.
    """

    def __init__(self, func: Callable[..., Any], limits: BatchLimits, is_method: bool) -> None:
        self.func = func
        self.limits = limits
        """The decorator's options."""
        self.is_method = is_method
        self.streaming = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        self._queues: dict[int, tuple[Any, BatchQueue]] = {}
        self._configured: dict[int, tuple[Any, BatchLimits]] = {}

    def queue_for(self, owner: Any) -> BatchQueue:
        """The queue of `owner`, made in the running loop if missing or from another loop."""
        entry = self._queues.get(id(owner))
        if entry is None or entry[0] is not owner or entry[1].loop is not asyncio.get_running_loop():
            bound = functools.partial(self.func, owner) if self.is_method else self.func
            name = getattr(self.func, "__qualname__", "batch")
            entry = (owner, BatchQueue(bound, self.limits_for(owner), name))
            self._queues[id(owner)] = entry
        return entry[1]

    def limits_for(self, owner: Any) -> BatchLimits:
        """The options `owner`'s queue runs with: those given to `configure`, else the decorator's."""
        entry = self._configured.get(id(owner))
        return _resolved(entry[1] if entry is not None and entry[0] is owner else self.limits)

    def configure(self, owner: Any, limits: BatchLimits) -> None:
        """Run `owner`'s queue with `limits`, now if it exists, else from its first call."""
        self._configured[id(owner)] = (owner, limits)
        queue = self.existing_queue(owner)
        if queue is not None:
            queue.configure(limits)

    def existing_queue(self, owner: Any) -> BatchQueue | None:
        """The queue of `owner` if one was made."""
        entry = self._queues.get(id(owner))
        return entry[1] if entry is not None and entry[0] is owner else None

    def discard(self, owner: Any) -> None:
        """Close and forget the queue and options of `owner` (its replica stopped)."""
        queue = self.existing_queue(owner)
        if queue is not None:
            queue.close()
            del self._queues[id(owner)]
        entry = self._configured.get(id(owner))
        if entry is not None and entry[0] is owner:
            del self._configured[id(owner)]


def batch(
    func: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_concurrent_batches: int = 1,
    wait: str | None = None,
) -> Any:
    """Batch calls to a method (or function): callers pass one item, the function gets lists.

    ```python
    @servekit.batch(max_batch_size=32, max_wait_ms=5)
    async def predict(self, xs: list[Tensor]) -> list[int]: ...
    ```

    A batch starts at once when the model is free and no other call waits; while a batch runs,
    calls queue and form the next one. The queue holds a batch open for more calls only while
    that pays (calls arrive faster than a batch's learned fixed cost), never beyond
    `max_wait_ms` for the oldest call nor `max_batch_size` calls. `max_concurrent_batches` lets
    batches overlap (for pipelined GPU work). `wait` says how a batch holds: ``"adaptive"``
    (only while it pays, as above) or ``"fill"`` (under load, for the whole `max_wait_ms`, as
    Ray Serve's `@serve.batch` does; a lone caller still goes at once). Unset, it is
    ``"adaptive"`` on the local runtime and ``"fill"`` on Ray, where most of the queue waits in
    Ray's proxy, out of the batcher's sight. A deployment can override these per method with
    `batching={"predict": BatchOptions(...)}`, also at runtime.

    The function returns one result per input, in order; an `Exception` instance in place of a
    result fails only that caller. A generator function yields, at each step, one chunk per
    input (a `StopIteration()` in a position ends that caller's stream). Works on sync and async
    functions; sync ones run on a worker thread.
    """
    if max_batch_size < 1:
        raise DeploymentOptionError(f"batch option max_batch_size={max_batch_size!r} must be >= 1")
    if max_wait_ms < 0:
        raise DeploymentOptionError(f"batch option max_wait_ms={max_wait_ms!r} must be >= 0")
    if not isinstance(max_concurrent_batches, int) or max_concurrent_batches < 1:
        raise DeploymentOptionError(
            f"batch option max_concurrent_batches={max_concurrent_batches!r} must be an int >= 1 "
            "(1 runs one batch at a time; 2 or more let batches overlap, e.g. for GPU pipelines)"
        )
    if wait is not None and wait not in WAIT_MODES:
        modes = ", ".join(map(repr, WAIT_MODES))
        raise DeploymentOptionError(f"batch option wait={wait!r} must be one of {modes}")
    limits = BatchLimits(max_batch_size, max_wait_ms / 1000, max_concurrent_batches, wait)

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(target).parameters)
        state = BatchedFunction(target, limits, is_method=bool(params) and params[0] == "self")
        return _wrap(target, state)

    return decorate if func is None else decorate(func)


def _wrap(target: Callable[..., Any], state: BatchedFunction) -> Callable[..., Any]:
    def owner_and_args(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        if state.is_method:
            return args[0], args[1:]
        return current_replica() or asyncio.get_running_loop(), args

    if state.streaming:

        @functools.wraps(target)
        async def stream_one(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            owner, rest = owner_and_args(args)
            async for chunk in state.queue_for(owner).submit_stream(rest, kwargs):
                yield chunk

        wrapper: Callable[..., Any] = stream_one
    else:

        @functools.wraps(target)
        async def call_one(*args: Any, **kwargs: Any) -> Any:
            owner, rest = owner_and_args(args)
            return await state.queue_for(owner).submit(rest, kwargs)

        wrapper = call_one
    setattr(wrapper, BATCH_ATTR, state)
    return wrapper


def batched_state(func: object) -> BatchedFunction | None:
    """The `BatchedFunction` behind a `@batch`-decorated function or bound method, if any."""
    state = getattr(func, BATCH_ATTR, None)
    return state if isinstance(state, BatchedFunction) else None


def next_in_context(context: contextvars.Context, generator: Generator[Any]) -> Any:
    """The generator's next value in `context`, or `END` when exhausted (for worker threads)."""
    return context.run(next, generator, END)
