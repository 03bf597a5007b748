"""Plain Starlette baselines (the floor): one process, no framework on top.

All routes are ``POST /`` with body ``{"x": [16 floats]}``.  The ``build_*``
functions import torch lazily so that W1 starts without it.

* W1 ``build_w1``: echo, returns ``{"y": x}``.
* W2 ``build_w2``: normalize -> MLP -> softmax/argmax in one handler.
* W3 ``build_w3``: one forward pass per request (no batching).
* W3 ``build_w3_batched``: a hand-rolled asyncio batcher (max 32, 5 ms wait);
  ``GET /stats`` returns ``{"batches": n, "items": m}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.workloads import MAX_BATCH_SIZE, MAX_WAIT_MS
from benchmarks.workloads.transforms import normalize, postprocess

Item = list[float]
Result = dict[str, float | int]
BatchFn = Callable[[list[Item]], list[Result]]


def _app(*routes: Route) -> Starlette:
    return Starlette(routes=list(routes))


def build_w1() -> Starlette:
    """W1 echo."""

    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"y": body["x"]})

    return _app(Route("/", echo, methods=["POST"]))


def build_w2() -> Starlette:
    """W2: normalize -> MLP 16-256-256-10 -> softmax/argmax, all in one handler."""
    from benchmarks.workloads.models import w2_model

    model = w2_model()

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(postprocess(model(normalize(body["x"]))))

    return _app(Route("/", predict, methods=["POST"]))


def build_w3() -> Starlette:
    """W3 without batching: one forward pass of the deep MLP per request."""
    from benchmarks.workloads.models import w3_model

    model = w3_model()

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(postprocess(model(body["x"])))

    return _app(Route("/", predict, methods=["POST"]))


@dataclass(slots=True)
class _Pending:
    item: Item
    future: asyncio.Future[Result]
    arrived: float


class Batcher:
    """Minimal dynamic batcher: flush at ``max_batch_size`` items or ``max_wait_s``.

    The wait is counted from the arrival of the oldest pending item.  The batch
    function runs on the event loop (it is short and CPU-bound).
    """

    def __init__(self, fn: BatchFn, max_batch_size: int, max_wait_s: float) -> None:
        """Create a batcher around ``fn`` (list of items -> list of results)."""
        self._fn = fn
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._pending: list[_Pending] = []
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run())
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append(_Pending(item, future, loop.time()))
        self._nonempty.set()
        if len(self._pending) >= self._max_batch_size:
            self._full.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._nonempty.wait()
            remaining = self._pending[0].arrived + self._max_wait_s - loop.time()
            if len(self._pending) < self._max_batch_size and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            self._flush(self._take())

    def _take(self) -> list[_Pending]:
        batch = self._pending[: self._max_batch_size]
        self._pending = self._pending[self._max_batch_size :]
        self._full.clear()
        if len(self._pending) >= self._max_batch_size:
            self._full.set()
        if not self._pending:
            self._nonempty.clear()
        return batch

    def _flush(self, batch: Sequence[_Pending]) -> None:
        try:
            results = self._fn([entry.item for entry in batch])
        except Exception as exc:  # deliver the failure to every caller
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        self.batches += 1
        self.items += len(batch)


def build_w3_batched() -> Starlette:
    """W3 with the hand-rolled batcher (max 32 items, 5 ms wait), plus ``GET /stats``."""
    from benchmarks.workloads.models import w3_model

    model = w3_model()

    def run_batch(xs: list[Item]) -> list[Result]:
        return [postprocess(logits) for logits in model.batch(xs)]

    batcher = Batcher(run_batch, MAX_BATCH_SIZE, MAX_WAIT_MS / 1000.0)

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(await batcher.submit(body["x"]))

    async def stats(_: Request) -> JSONResponse:
        payload: dict[str, Any] = {"batches": batcher.batches, "items": batcher.items}
        return JSONResponse(payload)

    return _app(Route("/", predict, methods=["POST"]), Route("/stats", stats, methods=["GET"]))


#: Workload name -> app factory, used by :mod:`benchmarks.workloads.launch`.
BUILDERS: dict[str, Callable[[], Starlette]] = {
    "w1": build_w1,
    "w2": build_w2,
    "w3": build_w3,
    "w3-batched": build_w3_batched,
}
