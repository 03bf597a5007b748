"""`within_timeout`: a call cut off at the deployment's request_timeout_s, the same on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

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
