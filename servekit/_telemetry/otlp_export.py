"""The exporter process: servekit's finished spans in (stdin), OTLP/HTTP (or the console) out.

A process that traces (`tracing.start_tracing`) starts this file as a script of its own (so it
imports opentelemetry-proto and not servekit). Its stdin carries length-prefixed pickled frames:
first (the settings as a dict, the serving process's pid), then batches of finished spans as
tuples of primitives (`tracing.Span.FIELDS`). Each batch becomes one OTLP
`ExportTraceServiceRequest` (opentelemetry-proto's generated messages, each distinct attribute
encoded once and reused), serialized once and POSTed as `application/x-protobuf` with the
standard library (`http.client`: a kept-alive connection, the configured headers, gzip when
asked, a bounded retry with backoff on 429/502/503/504 and connection errors). The `console`
exporter prints the spans through the OpenTelemetry SDK's `ConsoleSpanExporter`. The encoding
and the HTTP happen here, off the serving process's CPU and GIL. At the end of its input it
exports what it has and exits.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import pickle
import random
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

RETRIED_STATUSES = frozenset((429, 502, 503, 504))
"""Answers that mean "try again later" (OTLP/HTTP's retryable statuses)."""
MAX_ATTEMPTS = 6
"""Tries of one batch at most (within its timeout), with exponential backoff between them."""
_CACHE_LIMIT = 8192
"""Encoded attributes kept for reuse; past this, the cache starts over (request ids never repeat)."""


def frames(stream: IO[bytes]) -> Iterator[Any]:
    """The unpickled frames of `stream` (8-byte little-endian length, then the pickle) until EOF."""
    while True:
        size = stream.read(8)
        if len(size) < 8:
            return
        payload = stream.read(int.from_bytes(size, "little"))
        if not payload:
            return
        yield pickle.loads(payload)


@functools.cache
def _messages() -> Any:
    """opentelemetry-proto's common messages (imported once, in the exporter process only)."""
    from opentelemetry.proto.common.v1 import common_pb2  # noqa: PLC0415

    return common_pb2


def _any_value(value: Any) -> Any:
    """One attribute value as OTLP's `AnyValue` (bool before int: a bool is an int too)."""
    messages = _messages()
    if isinstance(value, bool):
        return messages.AnyValue(bool_value=value)
    if isinstance(value, int):
        return messages.AnyValue(int_value=value)
    if isinstance(value, float):
        return messages.AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        return messages.AnyValue(array_value=messages.ArrayValue(values=[_any_value(item) for item in value]))
    return messages.AnyValue(string_value=str(value))


def key_values(attributes: dict[str, Any] | None) -> list[Any]:
    """Attributes as OTLP `KeyValue`s."""
    key_value = _messages().KeyValue
    return [key_value(key=key, value=_any_value(value)) for key, value in (attributes or {}).items()]


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    """A protobuf length-delimited field: its tag, the payload's length as a varint, the payload."""
    size = len(payload)
    varint = bytearray()
    while size > 0x7F:
        varint.append((size & 0x7F) | 0x80)
        size >>= 7
    varint.append(size)
    return tag + bytes(varint) + payload


def string_attribute(key: str, value: str) -> bytes:
    """`Span.attributes` holding one string attribute, encoded by hand: what
    `Span(attributes=[KeyValue(key=key, value=AnyValue(string_value=value))]).SerializeToString()`
    gives (a test pins it), at a fraction of its cost, for the values that never repeat (request ids)."""
    any_value = _length_delimited(b"\x0a", value.encode())  # AnyValue.string_value = 1
    key_value = _length_delimited(b"\x0a", key.encode()) + _length_delimited(b"\x12", any_value)
    return _length_delimited(b"\x4a", key_value)  # Span.attributes = 9


class Encoder:
    """Finished-span tuples into one serialized `ExportTraceServiceRequest` per batch, for one
    process's resource (`service.name`, `OTEL_RESOURCE_ATTRIBUTES`, `process.pid`)."""

    def __init__(self, settings: dict[str, Any], pid: int) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: PLC0415
            ExportTraceServiceRequest,
        )
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope  # noqa: PLC0415
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: PLC0415
        from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: PLC0415

        attributes: dict[str, Any] = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "servekit"}
        attributes.update(dict(settings["resource"]))
        attributes.update({"service.name": settings["service_name"], "process.pid": pid})
        self._request = ExportTraceServiceRequest
        self._resource = Resource(attributes=key_values(attributes))
        self._scope = InstrumentationScope(name="servekit")
        self._span = Span
        self._encoded: dict[tuple[str, Any], bytes] = {}

    def _attributes(self, attributes: dict[str, Any]) -> bytes:
        """`attributes` as the encoded `Span.attributes` field, each (key, value) encoded once."""
        cache = self._encoded
        parts = []
        for item in attributes.items():
            try:
                encoded = cache.get(item)
            except TypeError:  # an unhashable value (a list): encoded every time
                parts.append(self._attribute(*item))
                continue
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[item] = self._attribute(*item)
            parts.append(encoded)
        return b"".join(parts)

    def _attribute(self, key: str, value: Any) -> bytes:
        if type(value) is str:
            return string_attribute(key, value)
        return bytes(self._span(attributes=key_values({key: value})).SerializeToString())

    def encode(self, batch: list[tuple[Any, ...]]) -> bytes:
        """One serialized `ExportTraceServiceRequest` holding every span of `batch`."""
        request = self._request()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.CopyFrom(self._resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(self._scope)
        add, merge_attributes = scope_spans.spans.add, self._attributes
        for trace_id, span_id, parent_id, name, kind, start, end, attributes, links, status, events in batch:
            trace = trace_id.to_bytes(16, "big")
            span = add(
                trace_id=trace,
                span_id=span_id.to_bytes(8, "big"),
                name=name,
                kind=kind + 1,  # servekit's kinds are OpenTelemetry's SpanKind values; OTLP's start at 1
                start_time_unix_nano=start,
                end_time_unix_nano=end,
            )
            if parent_id:
                span.parent_span_id = parent_id.to_bytes(8, "big")
            if attributes:
                span.MergeFromString(merge_attributes(attributes))  # a repeated field: appended
            if status:
                span.status.code, span.status.message = status
            for event, when, event_attributes in events or ():
                span.events.add(name=event, time_unix_nano=when, attributes=key_values(event_attributes))
            for link_trace, link_span in links or ():
                span.links.add(
                    trace_id=trace if link_trace == trace_id else link_trace.to_bytes(16, "big"),
                    span_id=link_span.to_bytes(8, "big"),
                )
        return bytes(request.SerializeToString())


class OtlpHttp:
    """POSTs serialized OTLP requests to one endpoint over a kept-alive connection."""

    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str],
        *,
        timeout_s: float = 10.0,
        compression: str = "none",
        certificate: str | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        url = urllib.parse.urlsplit(endpoint)
        self._backoff_s = backoff_s
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._headers = {**headers, "Content-Type": "application/x-protobuf", "User-Agent": "servekit"}
        self._gzip = compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout_s = timeout_s
        self._context = ssl.create_default_context(cafile=certificate) if self._https else None
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        else:
            self._connection.timeout = timeout_s
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout_s)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def post(self, body: bytes) -> None:
        """Send one request body, retrying a busy or unreachable collector with backoff until
        the timeout; raises `ExportError` saying why it gave up."""
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        deadline = time.monotonic() + self._timeout_s
        problem = "no time left"
        for attempt in range(MAX_ATTEMPTS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            outcome = self._attempt(body, remaining)
            if outcome is None:
                return
            problem, retry_after = outcome
            if retry_after == 0.0 and attempt == 0:
                continue  # a kept-alive connection the collector had closed: a fresh one at once
            pause = retry_after or min(self._backoff_s * 2**attempt, 8.0) * random.uniform(0.8, 1.2)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        raise ExportError(f"gave up after {self._timeout_s:g} s (the timeout): {problem}")

    def _attempt(self, body: bytes, timeout_s: float) -> tuple[str, float | None] | None:
        """One POST: None when delivered, else (what went wrong, the pause the collector asked
        for: 0 to retry at once, None for the backoff); raises `ExportError` when retrying is useless."""
        try:
            connection = self._connect(timeout_s)
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            answer = response.read()
            if response.will_close:
                self._close()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, closed
            self._close()
            stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
            return f"{type(exc).__name__}: {exc}", 0.0 if stale else None
        if response.status < 300:
            return None
        problem = f"HTTP {response.status}: {answer[:200]!r}"
        if response.status not in RETRIED_STATUSES:
            raise ExportError(problem)
        return problem, _seconds(response.getheader("Retry-After"))

    def close(self) -> None:
        """Close the connection."""
        self._close()


class ExportError(Exception):
    """A batch could not be delivered."""


def _seconds(value: str | None) -> float | None:
    """A `Retry-After` given in seconds (an HTTP date is ignored: the backoff applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value)


class Console:
    """Prints spans with the OpenTelemetry SDK's `ConsoleSpanExporter` (a debugging aid)."""

    def __init__(self, settings: dict[str, Any], pid: int) -> None:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk import trace as sdk  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

        attributes: dict[str, str | int] = dict(settings["resource"])
        attributes.update({"service.name": settings["service_name"], "process.pid": pid})
        self.resource = Resource.create(attributes)
        self.scope = InstrumentationScope("servekit")
        self._trace = trace
        self._sdk = sdk
        self._exporter = ConsoleSpanExporter()
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._kinds = {kind.value: kind for kind in trace.SpanKind}
        self._unset = trace.Status(trace.StatusCode.UNSET)

    def convert(self, finished: tuple[Any, ...]) -> Any:
        """One SDK `ReadableSpan` from a `tracing.Span.FIELDS` tuple."""
        trace, sdk, flags = self._trace, self._sdk, self._sampled
        trace_id, span_id, parent_id, name, kind, start, end, attributes, links, status, events = finished
        return sdk.ReadableSpan(
            name,
            trace.SpanContext(trace_id, span_id, False, flags),
            trace.SpanContext(trace_id, parent_id, False, flags) if parent_id else None,
            self.resource,
            attributes or {},
            [sdk.Event(event, event_attributes, when) for event, when, event_attributes in events or ()],
            [trace.Link(trace.SpanContext(t, s, False, flags)) for t, s in links or ()],
            self._kinds[kind],
            status=trace.Status(trace.StatusCode(status[0]), status[1]) if status else self._unset,
            start_time=start,
            end_time=end,
            instrumentation_scope=self.scope,
        )

    def export(self, batch: list[tuple[Any, ...]]) -> None:
        """Print one batch."""
        self._exporter.export([self.convert(finished) for finished in batch])

    def close(self) -> None:
        """Stop the SDK exporter."""
        self._exporter.shutdown()


class Otlp:
    """One batch in, one `ExportTraceServiceRequest` POSTed."""

    def __init__(self, settings: dict[str, Any], pid: int) -> None:
        self._encoder = Encoder(settings, pid)
        self._http = OtlpHttp(
            settings["endpoint"],
            dict(settings["headers"]),
            timeout_s=settings.get("timeout_s", 10.0),
            compression=settings.get("compression", "none"),
            certificate=settings.get("certificate"),
        )

    def export(self, batch: list[tuple[Any, ...]]) -> None:
        """Encode and send one batch."""
        self._http.post(self._encoder.encode(batch))

    def close(self) -> None:
        """Close the connection."""
        self._http.close()


def make_exporters(settings: dict[str, Any], pid: int) -> list[Otlp | Console]:
    """The exporters the settings name (`otlp`, `console`)."""
    return [
        Console(settings, pid) if name == "console" else Otlp(settings, pid) for name in settings["exporters"]
    ]


def main() -> None:
    """Export the spans of stdin until it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the server, which ends our input
    received = frames(sys.stdin.buffer)
    settings, pid = next(received)
    exporters = make_exporters(settings, pid)
    for batch in received:
        for exporter in exporters:
            try:
                exporter.export(batch)
            except Exception as exc:  # one bad batch never stops the exports that follow
                print(
                    f"servekit span exporter: {len(batch)} spans lost: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )
    for exporter in exporters:
        exporter.close()


if __name__ == "__main__":
    main()
