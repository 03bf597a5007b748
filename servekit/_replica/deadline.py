"""`request_timeout_s`, the same on every backend: what it bounds and the error past it.

- A unary call (`within_timeout`): the whole call, from the moment the caller makes it
  (waiting for a replica included) to its result.
- A stream (`chunks_within_timeout`): the wait for each chunk, so the time to the first chunk
  (waiting for a replica included) and every gap between two chunks. A stream may run as long
  as it keeps sending; the time the caller takes to consume a chunk does not count.

Past the bound the caller gets `RequestTimeoutError` (HTTP 504; mid-stream, an error chunk)
and the call is cancelled: async code at its next `await`. Sync code cannot be interrupted:
its thread runs on as an *abandoned* call, which keeps its replica slot until it returns (see
`Replica`), so a replica never runs more than `max_ongoing_requests` calls.

Each backend applies these where the caller waits (the local runtime; on Ray, the dispatcher
and the ingress replica's HTTP view). The replica counts abandoned calls, and where a backend
counts a request as running until its call returns (a worker process, a Ray replica), holds
the cancelled call until its thread returns. On Ray a cancelled request frees its slot at
once, so there the replica also applies the bound itself, and the caller does not cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import TypeVar

from servekit._spec.graph import DeploymentNode
from servekit.errors import RequestTimeoutError

T = TypeVar("T")


async def within_timeout(call: Awaitable[T], timeout_s: float | None, deployment: str, method: str) -> T:
    """Await `call`; past `timeout_s` cancel it and raise `RequestTimeoutError` (HTTP 504).

    A `TimeoutError` that `call` raises on its own passes through unchanged.
    """
    if timeout_s is None:
        return await call
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await call
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RequestTimeoutError(
            f"deployment {deployment!r} did not answer {method}() within "
            f"request_timeout_s={timeout_s:g}; the request was cancelled"
        ) from None


async def chunks_within_timeout(
    chunks: AsyncIterator[T], timeout_s: float | None, deployment: str, method: str
) -> AsyncGenerator[T]:
    """Yield `chunks`; when the first chunk or any next one takes over `timeout_s`, stop the stream
    and raise `RequestTimeoutError`. The stream is closed (its replica released) however it ends.
    """
    sent = 0
    try:
        while True:
            try:
                chunk = await next_within_timeout(chunks, timeout_s, deployment, method, sent)
            except StopAsyncIteration:
                return
            sent += 1
            yield chunk
    finally:
        await _close(chunks)


async def next_within_timeout(
    chunks: AsyncIterator[T], timeout_s: float | None, deployment: str, method: str, sent: int
) -> T:
    """The next of `chunks`, of which `sent` came already; past `timeout_s` cancel the wait and
    raise `RequestTimeoutError` (`StopAsyncIteration` at the end, as `anext`)."""
    if timeout_s is None:
        return await anext(chunks)
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await anext(chunks)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RequestTimeoutError(_stream_timeout_message(deployment, method, timeout_s, sent)) from None


def _stream_timeout_message(deployment: str, method: str, timeout_s: float, sent: int) -> str:
    what = "its first chunk" if sent == 0 else f"a chunk after chunk {sent}"
    return (
        f"deployment {deployment!r} did not send {what} of {method}() within "
        f"request_timeout_s={timeout_s:g}; the stream was cancelled"
    )


async def _close(chunks: AsyncIterator[object]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def request_timeouts(nodes: Mapping[str, DeploymentNode]) -> dict[str, float | None]:
    """Each deployment's `request_timeout_s` (for callers that only know deployment names)."""
    return {name: node.deployment.config.request_timeout_s for name, node in nodes.items()}
