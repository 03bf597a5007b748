"""Handles: how user code and `run()` call deployments, on any backend.

A call starts at once and returns a `DeploymentResponse` (await it, or `.result()` from sync
code) or, for generator methods, a `DeploymentResponseGenerator` (`async for` / `for`).
Calls may come from the runtime's event loop, from another loop (a notebook) or from a
plain thread; the handle bridges to the runtime's loop when needed.

A response passed as an argument to another call (`h.f(resp)`, `h.f([resp_a, resp_b])`,
`h.f({"a": resp})`) is awaited first, and the call gets its result: at the top level of the
arguments and inside lists, tuples and dicts (values), at any depth, within the first
`SCAN_LIMIT` nested values. Other objects (sets, dataclasses, models) are not looked into.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Protocol

from servekit._replica.multiplex import carrying_model_id
from servekit._replica.request_context import RequestContext, current_request, request_id_from, set_request
from servekit._replica.sync_calls import note_blocking_wait
from servekit._telemetry import tracing
from servekit.errors import DeploymentUnavailableError

SCAN_LIMIT = 1000
"""Nested values (items of lists, tuples and dict values) searched for responses, per call."""


class Dispatcher(Protocol):
    """What a handle needs from a runtime: its loop, and unary and streaming calls."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the runtime's replicas run on."""
        ...

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method on one replica of `deployment` and return the result."""
        ...

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method on one replica of `deployment` and yield its chunks."""
        ...

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` of `deployment` is a generator method (also checks it exists)."""
        ...


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class DeploymentResponse:
    """The pending result of a handle call: `await` it, or call `.result()` from sync code.

    It can be passed as an argument to another handle call without awaiting it first.
    """

    __slots__ = ("_future", "_loop", "_pending")

    def __init__(
        self,
        dispatcher: Dispatcher,
        deployment: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        model_id: str | None = None,
    ) -> None:
        loop = dispatcher.loop
        self._loop = loop
        coro: Coroutine[Any, Any, Any]
        if _has_response(args, kwargs):
            coro = _resolved_call(dispatcher, deployment, method, args, kwargs)
        else:
            coro = _dispatched(dispatcher, deployment, method, args, kwargs)
        if model_id is not None:
            coro = carrying_model_id(model_id, coro)
        self._future: asyncio.Future[Any] | concurrent.futures.Future[Any] | None = None
        self._pending: Coroutine[Any, Any, Any] | None = None
        if _on_loop(loop):
            # Awaited right away (the common case), the call runs inline in the caller's task;
            # otherwise it starts as a task on the next loop tick, so calls still overlap.
            self._pending = coro
            loop.call_soon(self._start)
            return
        outer = (
            coro if current_request() is not None else _in_new_request(coro)
        )  # from a script: a new request
        try:
            self._future = asyncio.run_coroutine_threadsafe(outer, loop)
        except RuntimeError:  # the loop is closed: the app was shut down
            outer.close()
            coro.close()
            raise DeploymentUnavailableError(f"deployment {deployment!r} is shut down") from None

    def __await__(self) -> Generator[Any, None, Any]:
        on_loop = _on_loop(self._loop)
        if self._pending is not None and on_loop:
            coro, self._pending = self._pending, None
            inline = self._loop.create_future()
            self._future = inline
            return _run_inline(coro, inline).__await__()
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        if on_loop and future is not None:
            return future.__await__()
        return asyncio.wrap_future(self._on_runtime_loop()).__await__()

    def result(self, timeout: float | None = None) -> Any:
        """Block until the result is ready (from sync code, never on the runtime's loop)."""
        note_blocking_wait()
        if _on_loop(self._loop):
            raise RuntimeError("DeploymentResponse.result() would block the event loop; use 'await response'")
        future = self._future
        if not isinstance(future, concurrent.futures.Future):
            future = self._on_runtime_loop()
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():  # the call itself failed with a TimeoutError (e.g. a 504)
                raise
            raise TimeoutError(f"no result within {timeout} s") from None

    def cancel(self) -> None:
        """Ask the runtime to cancel the call."""
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            future.cancel()
        elif not _on_loop(self._loop):
            self._loop.call_soon_threadsafe(self.cancel)
        elif self._pending is not None:
            self._pending.close()
            self._pending = None
            self._future = self._loop.create_future()
            self._future.cancel()
        elif future is not None:
            future.cancel()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a DeploymentResponse cannot be sent to another process; pass it as an argument of a "
            "handle call (at the top level, or in lists, tuples and dicts), which awaits it first, "
            "or pass 'await response'"
        )

    def _start(self) -> None:
        if self._pending is not None:
            self._future = self._loop.create_task(self._pending)
            self._pending = None

    def _on_runtime_loop(self) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(self._wait(), self._loop)

    async def _wait(self) -> Any:
        return await self


def _span_attributes(deployment: str, method: str) -> dict[str, str]:
    return {"servekit.deployment": deployment, "servekit.method": method}


async def _in_new_request(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` as a request of its own: a fresh request context (an id, no routing keys)."""
    set_request(RequestContext(request_id_from(None)))  # this task's own context
    return await coro


async def _run_inline(coro: Coroutine[Any, Any, Any], future: asyncio.Future[Any]) -> Any:
    """Run a call in the awaiting task, recording the outcome for any later awaiter."""
    try:
        result = await coro
    except asyncio.CancelledError:
        future.cancel()
        raise
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: nobody else may be waiting on it
        raise
    future.set_result(result)
    return result


_NESTING = frozenset({list, tuple, dict})
_NESTING_OR_RESPONSE = _NESTING | {DeploymentResponse}


def _has_response(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a response hides in the arguments (only lists, tuples and dicts are looked into)."""
    pending: list[Any] = [args, kwargs.values()] if kwargs else [args]
    budget = SCAN_LIMIT
    while pending:
        values = pending.pop()
        if _NESTING_OR_RESPONSE.isdisjoint(map(type, values)):  # scalars only: checked in C
            continue
        for value in values:
            kind = type(value)
            if kind is DeploymentResponse:
                return True
            if kind in _NESTING and value:
                budget -= len(value)
                if budget < 0:
                    return False
                pending.append(value.values() if kind is dict else value)
    return False


async def _resolved(value: Any) -> Any:
    """`value` with every response in it (through lists, tuples and dict values) replaced by its result."""
    kind = type(value)
    if kind is DeploymentResponse:
        return await value
    if kind is list:
        return [await _resolved(item) for item in value]
    if kind is tuple:
        return tuple([await _resolved(item) for item in value])
    if kind is dict:
        return {key: await _resolved(item) for key, item in value.items()}
    return value


async def _resolve_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not _has_response(args, kwargs):
        return args, kwargs
    resolved_args: tuple[Any, ...] = await _resolved(args)
    resolved_kwargs: dict[str, Any] = await _resolved(kwargs)
    return resolved_args, resolved_kwargs


async def _resolved_call(
    dispatcher: Dispatcher, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    args, kwargs = await _resolve_args(args, kwargs)
    return await _dispatched(dispatcher, deployment, method, args, kwargs)


def _dispatched(
    dispatcher: Dispatcher, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Coroutine[Any, Any, Any]:
    """The call, in a client span while tracing (its arguments resolved already)."""
    call = dispatcher.call(deployment, method, args, kwargs)
    active = tracing.active()
    if active is None or not active.recording():
        return call
    return active.traced(call, f"{deployment}.{method}", _span_attributes(deployment, method))


class DeploymentResponseGenerator:
    """The stream of a generator method: `async for chunk in ...` or `for chunk in ...`."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        deployment: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        model_id: str | None = None,
    ) -> None:
        self._loop = dispatcher.loop
        self._chunks = _resolved_stream(dispatcher, deployment, method, args, kwargs, model_id=model_id)

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        if _on_loop(self._loop):
            return await self._chunks.__anext__()
        return await asyncio.wrap_future(self._submit(self._next()))

    def __iter__(self) -> DeploymentResponseGenerator:
        return self

    def __next__(self) -> Any:
        note_blocking_wait()
        if _on_loop(self._loop):
            raise RuntimeError("iterating a stream with 'for' would block the loop; use 'async for'")
        try:
            return self._submit(self._next()).result()
        except StopAsyncIteration:
            raise StopIteration from None

    async def aclose(self) -> None:
        """Stop the stream early, releasing the replica."""
        if _on_loop(self._loop):
            await self._chunks.aclose()
        else:
            await asyncio.wrap_future(self._submit(self._close()))

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: the app was shut down
            coro.close()
            raise DeploymentUnavailableError("the app is shut down") from None

    async def _next(self) -> Any:
        return await self._chunks.__anext__()

    async def _close(self) -> None:
        await self._chunks.aclose()


async def _resolved_stream(
    dispatcher: Dispatcher,
    deployment: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    model_id: str | None = None,
) -> AsyncGenerator[Any]:
    args, kwargs = await _resolve_args(args, kwargs)
    chunks = dispatcher.stream(deployment, method, args, kwargs)
    active = tracing.active()
    if (
        active is not None and active.recording()
    ):  # a client span around the stream (its arguments resolved already)
        attributes = _span_attributes(deployment, method)
        chunks = active.traced_stream(chunks, f"{deployment}.{method}", "client", attributes)
    if model_id is not None:  # the first step picks the replica: it runs carrying the model id
        try:
            first = await carrying_model_id(model_id, anext(chunks))
        except StopAsyncIteration:
            return
        yield first
    async for chunk in chunks:
        yield chunk


Submitter = Callable[[tuple[str, str, tuple[Any, ...], dict[str, Any]]], Any]
"""Stores a call (deployment, method, args, kwargs) as an async job and returns its `Job`."""


class _MethodCaller:
    __slots__ = ("_handle", "_method")

    def __init__(self, handle: DeploymentHandle, method: str) -> None:
        self._handle = handle
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._invoke(self._method, args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Run the call as a durable async job; returns a `Job` (`job.status()`, `await job`)."""
        return self._handle._submit(self._method, args, kwargs)


class DeploymentHandle:
    """Calls one deployment of a running app: `handle.method(x)`, or `handle(x)` for `__call__`.

    Deployments bound as constructor arguments arrive as handles. A call returns a
    `DeploymentResponse`, or a `DeploymentResponseGenerator` for generator methods.
    """

    def __init__(self, dispatcher: Dispatcher, deployment: str, submitter: Submitter | None = None) -> None:
        self._dispatcher = dispatcher
        self._deployment = deployment
        self._streaming: dict[str, bool] = {}
        self._model_id: str | None = None
        self._submitter = submitter

    def options(self, *, multiplexed_model_id: str | None = None) -> DeploymentHandle:
        """A copy of this handle whose calls carry `multiplexed_model_id`.

        The call goes preferably to a replica that holds that model, and the replica's
        `servekit.get_multiplexed_model_id()` returns it.
        """
        copy = DeploymentHandle(self._dispatcher, self._deployment, self._submitter)
        copy._streaming = self._streaming
        copy._model_id = multiplexed_model_id
        return copy

    @property
    def deployment_name(self) -> str:
        """The name of the deployment this handle calls."""
        return self._deployment

    def __getattr__(self, method: str) -> _MethodCaller:
        if method.startswith("_"):
            raise AttributeError(method)
        caller = _MethodCaller(self, method)
        self.__dict__[method] = caller  # later lookups skip __getattr__
        return caller

    def method(self, name: str) -> _MethodCaller:
        """The caller for method `name`, for names that clash with the handle's own attributes."""
        return _MethodCaller(self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("__call__", args, kwargs)

    def _invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        streaming = self._streaming.get(method)
        if streaming is None:
            streaming = self._dispatcher.is_streaming(self._deployment, method)
            self._streaming[method] = streaming
        kind = DeploymentResponseGenerator if streaming else DeploymentResponse
        return kind(self._dispatcher, self._deployment, method, args, kwargs, model_id=self._model_id)

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._submitter is None:
            raise RuntimeError(
                "submit() works on the handles servekit.run() and servekit.serve() return "
                "(and their get_handle()), whose app keeps the job store"
            )
        return self._submitter((self._deployment, method, args, kwargs))

    def __repr__(self) -> str:
        return f"DeploymentHandle(deployment={self._deployment!r})"


__all__ = [
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "Dispatcher",
]
