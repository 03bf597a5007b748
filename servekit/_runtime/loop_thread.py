"""`LoopThread`: an event loop on a background thread, for runtimes started from sync code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def new_event_loop(kind: Literal["auto", "asyncio", "uvloop"] = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's for "uvloop" (and for "auto" when installed), else asyncio's."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        if kind == "uvloop":
            raise ImportError("loop='uvloop' needs uvloop: pip install uvloop") from None
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class LoopThread:
    """Runs an event loop on a daemon thread until `stop()`."""

    def __init__(self, name: str, kind: Literal["auto", "asyncio", "uvloop"] = "auto") -> None:
        self.loop = new_event_loop(kind)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own loop; await instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop, join the thread and close the loop."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is not self._thread:
            asyncio.run_coroutine_threadsafe(_cancel_pending(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()
            self.loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
