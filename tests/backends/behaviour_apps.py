"""Apps for the behaviour suite: nothing in them may depend on running in the test's process.

Every backend runs them (in-process, worker processes, Ray actors), so coordination goes
through files, never through objects shared with the test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.responses import PlainTextResponse

import servekit as sk

SECRET = "db-password-hunter2"
BODY_LIMIT = 1024


class Item(BaseModel):
    name: str
    quantity: int


class Receipt(BaseModel):
    name: str
    quantity: int
    total_cents: int


class SquareFailed(ValueError):
    """A user exception type, to check it arrives as itself."""


# On the test's Ray cluster both replicas sit on the head node ("head" is a custom resource of
# that node), so Ray's locality-first routing still has two replicas to balance between.
@sk.deployment(num_replicas=2, resources=sk.Resources(cpus=0.5, custom={"head": 0.01}))
class Doubler:
    def __call__(self, x: int) -> int:  # sync: runs on a worker thread
        return 2 * x

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def count_sync(self, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"s{i}"

    def fail(self, message: str) -> None:
        raise SquareFailed(message)

    async def echo(self, value: Any) -> Any:
        return value

    async def whoami(self) -> dict[str, Any]:
        await asyncio.sleep(0.01)  # in flight long enough for concurrent calls to spread
        context = sk.replica_context()
        return {"deployment": context.deployment, "replica_id": context.replica_id, "pid": os.getpid()}


@sk.deployment(max_ongoing_requests=64)
class Batched:
    @sk.batch(max_batch_size=4, max_wait_ms=200)
    async def square(self, xs: list[int]) -> list[int | Exception]:
        return [SquareFailed(f"cannot square {x}") if x < 0 else x * x for x in xs]

    @sk.batch(max_batch_size=8, max_wait_ms=200)
    def sizes(self, xs: list[str]) -> list[int]:  # a sync batched method
        time.sleep(0.02)  # a model that takes a while: callers arriving meanwhile share the next batch
        return [len(xs)] * len(xs)


@sk.deployment
class Front:
    """The handle-level ingress: calls its two dependencies in the ways users do."""

    def __init__(
        self, doubler: sk.DeploymentHandle, batched: sk.DeploymentHandle, extra: dict[str, Any]
    ) -> None:
        self.doubler = doubler
        self.batched = batched
        self.nested = extra["doubler"]  # a handle inside a dict

    async def chain(self, x: int) -> int:
        return await self.doubler.add(self.doubler(x), 1)  # a response passed on without awaiting it

    def sync_chain(self, x: int) -> int:
        return int(self.doubler(x).result(timeout=30)) + 1  # .result() from a sync method

    async def relay(self, n: int) -> AsyncIterator[int]:
        async for chunk in self.doubler.count(n):
            yield chunk * 10

    async def squares(self, xs: list[int]) -> list[Any]:
        results = await asyncio.gather(*(self.batched.square(x) for x in xs), return_exceptions=True)
        return [f"error: {type(r).__name__}: {r}" if isinstance(r, Exception) else r for r in results]

    async def batch_sizes(self, count: int) -> list[int]:
        return list(await asyncio.gather(*(self.batched.sizes(str(i)) for i in range(count))))

    async def deep_failure(self) -> None:
        await self.nested.fail("failed two hops down")

    async def replica_ids(self, calls: int) -> list[str]:
        answers = await asyncio.gather(*(self.doubler.whoami() for _ in range(calls)))
        return [answer["replica_id"] for answer in answers]


def handle_app() -> sk.Application:
    doubler = Doubler.bind()
    return Front.bind(doubler, Batched.bind(), {"doubler": doubler})


@sk.deployment(request_timeout_s=0.3)
class Sleeper:
    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "woke up"

    async def drip(self, count: int) -> AsyncIterator[dict[str, int]]:
        """`count` chunks at once, then silence past the timeout."""
        for i in range(count):
            yield {"i": i}
        await asyncio.sleep(30)
        yield {"i": count}


@sk.deployment(request_timeout_s=1.0)
class Streams:
    """Streams whose gaps the test chooses, under a 1 s request timeout."""

    async def drip(self, gaps: list[float]) -> AsyncIterator[int]:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield i

    def drip_sync(self, gaps: list[float]) -> Iterator[int]:
        for i, gap in enumerate(gaps):
            time.sleep(gap)
            yield i


@sk.deployment(request_timeout_s=0.3, max_ongoing_requests=1)
class Blocking:
    """A sync method that outlives its timeout, and a call that reports what else runs."""

    def __init__(self) -> None:
        self.running = 0

    def block(self, seconds: float) -> str:  # plain sync code: a timeout cannot stop it
        self.running += 1
        try:
            time.sleep(seconds)
        finally:
            self.running -= 1
        return "done"

    async def others_running(self) -> int:
        return self.running


@sk.deployment
class Timeouts:
    """The ingress of the timeout app; tests call `Streams` and `Blocking` through their handles."""

    def __init__(self, streams: sk.DeploymentHandle, blocking: sk.DeploymentHandle) -> None:
        self.streams = streams
        self.blocking = blocking

    async def ping(self) -> str:
        return "pong"


def timeouts_app() -> sk.Application:
    return Timeouts.bind(Streams.bind(), Blocking.bind())


@sk.deployment(max_ongoing_requests=2, max_queued_requests=1)
class Shop:
    """The HTTP ingress: typed endpoints, streaming, every error status."""

    def __init__(self, gates: str, sleeper: sk.DeploymentHandle) -> None:
        self.gates = Path(gates)
        self.sleeper = sleeper

    @sk.endpoint("/items")
    async def create(self, item: Item) -> Receipt:
        """Price an item."""
        return Receipt(name=item.name, quantity=item.quantity, total_cents=item.quantity * 250)

    @sk.endpoint("/items/{item_id}", methods=["GET"])
    async def read(self, item_id: int, verbose: bool = False) -> dict[str, Any]:
        return {"item_id": item_id, "verbose": verbose}

    @sk.endpoint("/upload")
    def upload(self, data: bytes) -> dict[str, int]:
        return {"size": len(data)}

    @sk.endpoint("/boom", methods=["GET"])
    async def boom(self) -> None:
        raise RuntimeError(f"connection failed with {SECRET}")

    @sk.endpoint("/hold", methods=["GET"])
    async def hold(self, name: str) -> dict[str, str]:
        deadline = time.monotonic() + 20  # bounded
        while not (self.gates / name).exists() and time.monotonic() < deadline:  # noqa: ASYNC110 (a file: other processes)
            await asyncio.sleep(0.01)
        return {"released": name}

    @sk.endpoint("/timeout", methods=["GET"])
    async def timeout(self) -> str:
        return await self.sleeper.sleep(30)

    @sk.endpoint("/events", methods=["GET"])
    async def events(self, n: int) -> AsyncIterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i, "square": i * i}

    @sk.endpoint("/drip", methods=["GET"])
    async def drip(self, count: int) -> AsyncIterator[dict[str, int]]:
        async for chunk in self.sleeper.drip(count):
            yield chunk

    @sk.endpoint("/report", mode="async")
    async def report(self, item: Item) -> Receipt:
        """Price an item as an async job."""
        sk.job_context().progress(1.0)
        return Receipt(name=item.name, quantity=item.quantity, total_cents=item.quantity * 250)

    @sk.endpoint("/plain", methods=["GET"])
    async def plain(self) -> PlainTextResponse:
        return PlainTextResponse("plain ✓", headers={"x-served-by": "shop"})


def http_app(gates: Path) -> sk.Application:
    return Shop.bind(str(gates), Sleeper.bind())


@sk.deployment(num_replicas=2)
class Versioned:
    """Answers with the version it was built as; its constructor fails when told to."""

    def __init__(self, version: str, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"version {version} cannot load its weights")
        self.version = version

    def __call__(self) -> str:
        return self.version


@sk.deployment
class VersionFront:
    def __init__(self, model: sk.DeploymentHandle) -> None:
        self.model = model

    async def __call__(self) -> str:
        return str(await self.model())


def versioned_app(version: str, fail: bool = False) -> sk.Application:
    """`VersionFront -> Versioned` (2 replicas) labelled and built as `version`."""
    model = Versioned.options(version=version).bind(version, fail=fail)
    return VersionFront.bind(model)
