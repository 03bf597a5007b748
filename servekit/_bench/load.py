"""One process's share of a load phase: keep-alive HTTP/1.1 connections on asyncio, driven closed-loop
(each connection sends its next request when the last one is answered) or open-loop (requests
at scheduled times, see `servekit._bench.schedule`).

A `PhasePlan` in; a `PhaseResult` (latency histogram, responses by status, transport errors,
a per-second timeline) out. The client is a bare `asyncio.Protocol` with httptools' response
parser and pre-built request bytes, so it costs a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

import httptools

from servekit._bench.histogram import Histogram
from servekit._bench.schedule import Arrivals, arrivals, latency_start

clock = time.monotonic  # the same clock in every process, so one start time serves them all


class BenchError(Exception):
    """The load cannot run (the target refuses connections, say); the message says why."""


class _TransportError(Exception):
    """A request failed below HTTP; `kind` names how (timeout, closed, protocol, connect)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


@dataclass(frozen=True)
class PhasePlan:
    """One process's part of a phase."""

    host: str
    port: int
    request: bytes
    connections: int
    rate: float | None
    """Open loop: the whole run's requests/s (this process sends every `stride`-th); None: closed loop."""
    offset: int = 0
    stride: int = 1
    warmup_s: float = 0.0
    duration_s: float = 10.0
    timeout_s: float = 30.0
    tls: bool = False
    verify_tls: bool = True
    arrival: str = "constant"
    """Open loop: "constant" (evenly spaced) or "poisson" (random gaps)."""


@dataclass
class PhaseResult:
    """What a phase measured (after its warm-up): mergeable across processes."""

    latency: Histogram = field(default_factory=Histogram)
    """Latencies of the successful responses (status below 400), in µs."""
    first_byte: Histogram = field(default_factory=Histogram)
    """Successful responses: from the latency's start to the first byte of the body, in µs (for
    a streamed response, the first chunk: a token stream's time to first token)."""
    send_lag: Histogram = field(default_factory=Histogram)
    """Open loop: how late requests that a free connection sent went out (the client's timer lag)."""
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    warmup_requests: int = 0
    unsent: int = 0
    bytes_received: int = 0
    timeline: list[list[int]] = field(default_factory=list)
    """Per second of the measured window: [responses, errors, latency sum µs, latency max µs]."""
    elapsed_s: float = 0.0

    @property
    def requests(self) -> int:
        """Requests answered or failed in the measured window."""
        return sum(self.statuses.values()) + sum(self.errors.values())

    def merge(self, other: PhaseResult) -> None:
        """Add another process's result to this one."""
        self.latency.merge(other.latency)
        self.first_byte.merge(other.first_byte)
        self.send_lag.merge(other.send_lag)
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.warmup_requests += other.warmup_requests
        self.unsent += other.unsent
        self.bytes_received += other.bytes_received
        for second, row in enumerate(other.timeline):
            if second == len(self.timeline):
                self.timeline.append([0, 0, 0, 0])
            mine = self.timeline[second]
            mine[0], mine[1], mine[2] = mine[0] + row[0], mine[1] + row[1], mine[2] + row[2]
            mine[3] = max(mine[3], row[3])
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request and waits for its whole response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[float] | None = None
        self.status = 0
        self.keep_alive = True
        self.received = 0
        self.busy_since = 0.0
        self.first_body = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(_TransportError("protocol", f"bad HTTP response: {exc}"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = clock()

    def on_message_complete(self) -> None:
        done = clock()
        self.keep_alive = self._parser.should_keep_alive()
        waiter, self._waiter = self._waiter, None
        self.busy_since = 0.0
        if waiter is not None and not waiter.done():
            waiter.set_result(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(_TransportError("closed", "the server closed the connection"))

    def _fail(self, error: _TransportError) -> None:
        waiter, self._waiter = self._waiter, None
        self.busy_since = 0.0
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def abort(self, error: _TransportError) -> None:
        """Fail the request in flight with `error` and drop the connection."""
        self._fail(error)
        self.lost = True
        if self._transport is not None:
            self._transport.abort()

    async def request(self, payload: bytes) -> tuple[int, float, float]:
        """Send `payload`; (status, sent at, answered at) once the whole response arrived."""
        assert self._transport is not None
        waiter = self._loop.create_future()
        self._waiter = waiter
        sent = clock()
        self.busy_since = sent
        self.first_body = 0.0
        self._transport.write(payload)
        done = await waiter
        return self.status, sent, done


class PhaseRunner:
    """Runs one process's part of a phase: `connect()`, then `run(start_at)`."""

    def __init__(self, plan: PhasePlan) -> None:
        self.plan = plan
        self.result = PhaseResult()
        self.completed = 0
        """Requests finished so far, warm-up included (read by the progress reporter)."""
        self.failed = 0
        self._connections: list[Connection] = []
        self._ssl = _ssl_context(plan) if plan.tls else None
        self._measure_from = 0.0
        self._end = 0.0
        self._next_ticket = 0
        self._schedule: Arrivals | None = None

    async def connect(self) -> None:
        """Open every connection; BenchError when the target refuses."""
        try:
            self._connections = [await self._open() for _ in range(self.plan.connections)]
        except OSError as exc:
            await self.close()
            where = f"{self.plan.host}:{self.plan.port}"
            raise BenchError(f"cannot connect to {where}: {exc.strerror or exc}") from None

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        host = self.plan.host if self._ssl is not None else None
        _, protocol = await loop.create_connection(
            lambda: Connection(loop), self.plan.host, self.plan.port, ssl=self._ssl, server_hostname=host
        )
        return protocol

    async def run(self, start_at: float) -> PhaseResult:
        """Load the target from `start_at` (a `clock()` time) for warm-up plus duration."""
        plan = self.plan
        self._measure_from = start_at + plan.warmup_s
        self._end = self._measure_from + plan.duration_s
        self.result.timeline = [[0, 0, 0, 0] for _ in range(max(1, int(plan.duration_s + 0.999)))]
        if plan.rate is not None:
            self._schedule = arrivals(plan.arrival, start_at, plan.rate, plan.offset, plan.stride)
        worker = self._open_worker if plan.rate is not None else self._closed_worker
        watchdog = asyncio.create_task(self._watch_timeouts())
        await asyncio.sleep(max(0.0, start_at - clock()))
        try:
            await asyncio.gather(*(worker(index) for index in range(len(self._connections))))
        finally:
            watchdog.cancel()
        self.result.elapsed_s = max(clock(), self._end) - self._measure_from
        if self._schedule is not None:
            self.result.unsent = max(0, self._schedule.count_before(self._end) - self._next_ticket)
        self.result.bytes_received = sum(c.received for c in self._connections)
        return self.result

    async def close(self) -> None:
        """Close every connection."""
        for connection in self._connections:
            if connection._transport is not None:
                connection._transport.close()
        self._connections = []

    async def _closed_worker(self, index: int) -> None:
        while clock() < self._end:
            await self._exchange(index, None, 0.0)

    async def _open_worker(self, index: int) -> None:
        schedule = self._schedule
        assert schedule is not None
        while True:
            intended = schedule.intended(self._next_ticket)
            picked = clock()
            if intended >= self._end or picked >= self._end:
                return
            self._next_ticket += 1
            if intended > picked:
                await asyncio.sleep(intended - picked)
            await self._exchange(index, intended, picked)

    async def _exchange(self, index: int, intended: float | None, picked: float) -> None:
        """Send one request on connection `index` and count its outcome. In open loop the request
        belongs to the warm-up or the measured window by its intended time, else by its send time."""
        connection = self._connections[index]
        if connection.lost:
            fresh = await self._reconnect(index)
            if fresh is None:
                self._count_error("connect", intended if intended is not None else clock())
                return
            connection = fresh
        try:
            status, sent, done = await connection.request(self.plan.request)
        except _TransportError as exc:
            self._count_error(exc.kind, intended if intended is not None else clock())
            await self._reconnect(index)
            return
        first_body = connection.first_body
        if intended is None:
            self._count(status, sent, sent, done, first_body)
        else:
            start = latency_start(intended, picked, sent)
            if start == sent and intended >= self._measure_from:
                self.result.send_lag.record(int((sent - intended) * 1e6))
            self._count(status, intended, start, done, first_body)
        if not connection.keep_alive:
            await self._reconnect(index)

    async def _reconnect(self, index: int) -> Connection | None:
        old = self._connections[index]
        old.abort(_TransportError("closed"))
        try:
            fresh = await self._open()
        except OSError:
            await asyncio.sleep(0.05)  # a refusing server: do not spin
            return None
        fresh.received = old.received
        self._connections[index] = fresh
        return fresh

    def _count(self, status: int, due: float, start: float, done: float, first_body: float = 0.0) -> None:
        """Count a response to a request due at `due` whose latency runs from `start` to `done`
        (its body's first byte came at `first_body`; 0: no body)."""
        self.completed += 1
        if status >= 400:
            self.failed += 1
        if due < self._measure_from:
            self.result.warmup_requests += 1
            return
        statuses = self.result.statuses
        statuses[status] = statuses.get(status, 0) + 1
        row = self._row(done)
        row[0] += 1
        if status >= 400:
            row[1] += 1
            return
        latency_us = int((done - start) * 1e6)
        self.result.latency.record(latency_us)
        self.result.first_byte.record(int(((first_body or done) - start) * 1e6))
        row[2] += latency_us
        row[3] = max(row[3], latency_us)

    def _count_error(self, kind: str, start: float) -> None:
        self.completed += 1
        self.failed += 1
        if start < self._measure_from:
            self.result.warmup_requests += 1
            return
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1
        self._row(clock())[1] += 1

    def _row(self, done: float) -> list[int]:
        timeline = self.result.timeline
        return timeline[min(max(int(done - self._measure_from), 0), len(timeline) - 1)]

    async def _watch_timeouts(self) -> None:
        """Fail requests older than the timeout (one check every tenth of it, at most 0.5 s)."""
        timeout = self.plan.timeout_s
        while True:
            await asyncio.sleep(min(0.5, timeout / 10))
            now = clock()
            for connection in self._connections:
                if connection.busy_since and now - connection.busy_since > timeout:
                    connection.abort(_TransportError("timeout", f"no response within {timeout} s"))


def _ssl_context(plan: PhasePlan) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not plan.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def run_phase(plan: PhasePlan, start_delay_s: float = 0.05) -> PhaseResult:
    """Connect, then run `plan` in this process (tests and single-process callers)."""
    runner = PhaseRunner(plan)
    await runner.connect()
    try:
        return await runner.run(clock() + start_delay_s)
    finally:
        with contextlib.suppress(Exception):
            await runner.close()
