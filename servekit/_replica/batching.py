"""Dynamic batching: `@batch` turns per-item calls into list calls, one queue per method per replica.

Each caller passes one item and awaits one result. A `BatchQueue` collects items until
`max_batch_size` are waiting or `max_wait_ms` passed since the first, then calls the user's
function with lists. One batch runs at a time per queue; items arriving meanwhile form the next.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.context import current_replica
from servekit.errors import DeploymentOptionError, DeploymentUnavailableError

logger = logging.getLogger("servekit.batching")

BATCH_ATTR = "__servekit_batch__"
END = object()


@dataclass
class BatchStats:
    """Counts of batches formed by one queue; `sizes[n]` is how many batches had n items."""

    batches: int = 0
    items: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        """Count one batch of `size` items."""
        self.batches += 1
        self.items += size
        self.sizes[size] = self.sizes.get(size, 0) + 1

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
        }


@dataclass
class _Item:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any] | None = None
    stream: asyncio.Queue[Any] | None = None
    closed: bool = False
    arrived: float = 0.0

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled, timed out or stopped reading)."""
        return self.closed or (self.future is not None and self.future.done())


class BatchQueue:
    """Collects single calls into batches for one function on one event loop."""

    def __init__(
        self,
        func: Callable[..., Any],
        max_batch_size: int,
        max_wait_s: float,
        name: str,
    ) -> None:
        self._func = func
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._name = name
        self._streaming = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._full: asyncio.Future[None] | None = None
        self.stats = BatchStats()
        self._task = self._loop.create_task(self._run(), name=f"servekit-batch-{name}")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the queue runs on."""
        return self._loop

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    async def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Queue one item and wait for its result."""
        item = _Item(args, kwargs, future=self._loop.create_future(), arrived=self._loop.time())
        self._enqueue(item)
        assert item.future is not None
        return await item.future

    async def submit_stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Queue one item of a batched generator and yield its share of each step."""
        item = _Item(args, kwargs, stream=asyncio.Queue(), arrived=self._loop.time())
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
        """Stop the loop and fail every waiting item."""
        self._task.cancel()
        error = DeploymentUnavailableError(f"batched method {self._name!r} is shutting down")
        while self._pending:
            _fail(self._pending.popleft(), error)

    def _enqueue(self, item: _Item) -> None:
        if self._task.done():
            raise DeploymentUnavailableError(f"batched method {self._name!r} is shut down")
        self._pending.append(item)
        _resolve(self._wakeup)
        if len(self._pending) >= self._max_batch_size:
            _resolve(self._full)

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    self.stats.record(len(batch))
                    await self._execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any single batch
                logger.exception("batching loop of %s failed; continuing", self._name)

    async def _next_batch(self) -> list[_Item]:
        while not self._pending:
            self._wakeup = self._loop.create_future()
            await self._wakeup
        # The wait counts from the oldest item's arrival: items that queued while the previous
        # batch ran have waited already, so a busy queue flushes sooner and no item waits longer
        # than max_wait_ms for its batch to start.
        remaining = self._pending[0].arrived + self._max_wait_s - self._loop.time()
        if len(self._pending) < self._max_batch_size and remaining > 0:
            self._full = self._loop.create_future()
            timer = self._loop.call_later(remaining, _resolve, self._full)
            try:
                await self._full
            finally:
                timer.cancel()
        batch: list[_Item] = []
        while self._pending and len(batch) < self._max_batch_size:
            item = self._pending.popleft()
            if not item.abandoned:
                batch.append(item)
        return batch

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


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


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


@dataclass(frozen=True)
class BatchOptions:
    """How a batched function forms batches."""

    max_batch_size: int
    max_wait_ms: float


class BatchedFunction:
    """The state behind one `@batch`-decorated function: options and a queue per replica.

    Queues are keyed by the owner: the replica instance for methods, the current replica (or
    the event loop outside one) for plain functions. A queue is made on first use in the
    running loop; the runtime calls `discard` when the replica stops, so nothing is stored on
    user objects.
    """

    def __init__(self, func: Callable[..., Any], options: BatchOptions, is_method: bool) -> None:
        self.func = func
        self.options = options
        self.is_method = is_method
        self.streaming = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        self._queues: dict[int, tuple[Any, BatchQueue]] = {}

    def queue_for(self, owner: Any) -> BatchQueue:
        """The queue of `owner`, made in the running loop if missing or from another loop."""
        entry = self._queues.get(id(owner))
        if entry is None or entry[0] is not owner or entry[1].loop is not asyncio.get_running_loop():
            bound = functools.partial(self.func, owner) if self.is_method else self.func
            name = getattr(self.func, "__qualname__", "batch")
            opts = self.options
            entry = (owner, BatchQueue(bound, opts.max_batch_size, opts.max_wait_ms / 1000, name))
            self._queues[id(owner)] = entry
        return entry[1]

    def existing_queue(self, owner: Any) -> BatchQueue | None:
        """The queue of `owner` if one was made."""
        entry = self._queues.get(id(owner))
        return entry[1] if entry is not None and entry[0] is owner else None

    def discard(self, owner: Any) -> None:
        """Close and forget the queue of `owner` (its replica stopped)."""
        queue = self.existing_queue(owner)
        if queue is not None:
            queue.close()
            del self._queues[id(owner)]


def batch(
    func: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
) -> Any:
    """Batch calls to a method (or function): callers pass one item, the function gets lists.

    ```python
    @servekit.batch(max_batch_size=32, max_wait_ms=5)
    async def predict(self, xs: list[Tensor]) -> list[int]: ...
    ```

    The function returns one result per input, in order; an `Exception` instance in place of a
    result fails only that caller. A generator function yields, at each step, one chunk per
    input (a `StopIteration()` in a position ends that caller's stream). Works on sync and async
    functions; sync ones run on a worker thread.
    """
    if max_batch_size < 1:
        raise DeploymentOptionError(f"batch option max_batch_size={max_batch_size!r} must be >= 1")
    if max_wait_ms < 0:
        raise DeploymentOptionError(f"batch option max_wait_ms={max_wait_ms!r} must be >= 0")
    options = BatchOptions(max_batch_size, max_wait_ms)

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(target).parameters)
        state = BatchedFunction(target, options, is_method=bool(params) and params[0] == "self")
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
