"""`OutgoingCalls`: one side's calls to the other process, waiting for their `Reply` / `Chunk` / `End`.

Both ends use it: the server for requests to a worker, the worker for its user code's handle
calls to other deployments. Each call gets an id; answers are matched by it; a caller that
gives up sends `Cancel`, and when the link breaks every pending call fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from servekit._runtime.local.workers.messages import Cancel, Chunk, End, Reply

Send = Callable[[Any], None]
"""Writes one message to the other process; raises when it cannot."""


class OutgoingCalls:
    """Pending calls to the other process, by id."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any] | asyncio.Queue[Any]] = {}

    async def call(self, request: Callable[[int], Any]) -> Any:
        """Send `request(id)` and wait for its reply's value (or raise its error)."""
        key = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            self._send(request(key))
            return await future
        except asyncio.CancelledError:
            self._cancel(key)
            raise
        finally:
            self._pending.pop(key, None)

    async def stream(self, request: Callable[[int], Any]) -> AsyncIterator[Any]:
        """Send `request(id)` and yield its chunks until `End` (or raise the error that ended it)."""
        key = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[key] = queue
        finished = False
        try:
            self._send(request(key))
            while True:
                message = await queue.get()
                if isinstance(message, Chunk):
                    yield message.value
                    continue
                finished = True
                if isinstance(message, Reply):
                    raise message.value
                return
        finally:
            self._pending.pop(key, None)
            if not finished:
                self._cancel(key)

    def answer(self, message: Reply | Chunk | End | Any) -> None:
        """Route an answer from the other process to its call (late answers are dropped)."""
        waiter = self._pending.get(message.id)
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(message)
        elif waiter.done():
            return
        elif isinstance(message, Reply) and not message.ok:
            waiter.set_exception(message.value)
        else:
            waiter.set_result(message if not isinstance(message, Reply) else message.value)

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending call with `error` (the other process is gone)."""
        for waiter in list(self._pending.values()):
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(Reply(-1, False, error))
            elif not waiter.done():
                waiter.set_exception(error)

    def _cancel(self, key: int) -> None:
        with contextlib.suppress(Exception):  # the link may be gone already; nothing left to stop
            self._send(Cancel(key))
