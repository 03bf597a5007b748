"""Shared test configuration: HTTP clients for every test that talks to a server, polling helpers,
and a real OTLP/HTTP receiver for the tracing tests."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

CLIENT_TIMEOUT_S = 30.0
"""Bounds every request a test makes (a Ray replica may take seconds to answer its first call)."""


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A sync client with a bounded timeout; pass full URLs (`server.url + path`)."""
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
        yield http


@pytest.fixture
async def async_client() -> AsyncIterator[httpx.AsyncClient]:
    """An async client with a bounded timeout and room for many concurrent connections."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
        yield http


WAIT_S = 30.0
"""How long a test waits for a condition before it fails (generous: CI machines are busy)."""


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.01)


async def _await_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """`wait_until(condition, what)`: poll until `condition()` holds, failing after `WAIT_S`."""
    return _wait_until


@pytest.fixture
def await_until() -> Callable[..., Awaitable[None]]:
    """`await await_until(condition, what)`: the same from async tests, without blocking the loop."""
    return _await_until


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP/HTTP exporter sent it (ids as hex, attributes as plain values)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]
    """The span ids this span links to."""
    attributes: dict[str, Any]
    status: str
    resource: dict[str, Any]


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver on 127.0.0.1 (a free port): decodes each
    `ExportTraceServiceRequest` with opentelemetry-proto and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def take(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            links=tuple(link.span_id.hex() for link in span.links),
                            attributes=_values(span.attributes),
                            status=Status.StatusCode.Name(span.status.code)
                            .removeprefix("STATUS_CODE_")
                            .lower(),
                            resource=resource,
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans received so far of one trace."""
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _values(attributes: Any) -> dict[str, Any]:
    values = {}
    for attribute in attributes:
        value = attribute.value
        values[attribute.key] = (
            getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        )
    return values


@pytest.fixture
def otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A test OTLP/HTTP receiver, with the `OTEL_*` variables pointing servekit's exporter at it
    (and spans sent within 50 ms of their end)."""
    receiver = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    yield receiver
    receiver.close()
