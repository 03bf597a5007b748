"""The exporter process: servekit's finished spans in (stdin), OTLP/HTTP (or the console) out.

A process that traces (`tracing.start_tracing`) starts this file as a script of its own (so it
imports OpenTelemetry and not servekit). Its stdin carries length-prefixed pickled frames: first
(the settings as a dict, the serving process's pid), then batches of finished spans as tuples
of primitives (`tracing.Span.FIELDS`). Each batch becomes the SDK's `ReadableSpan`s, handed to
the OpenTelemetry SDK's own exporters (`OTLPSpanExporter`, `ConsoleSpanExporter`): the encoding,
the HTTP, the retries happen here, off the serving process's CPU and GIL. At the end of its
input it exports what it has, shuts the exporters down and exits.
"""

from __future__ import annotations

import pickle
import signal
import sys
from collections.abc import Iterator
from typing import IO, Any


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


def make_exporters(settings: dict[str, Any]) -> list[Any]:
    """The SDK exporters the settings name (`otlp`, `console`)."""
    exporters: list[Any] = []
    for name in settings["exporters"]:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

            exporters.append(ConsoleSpanExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

            timeout = settings["batch"].get("export_timeout_millis")
            exporters.append(
                OTLPSpanExporter(
                    endpoint=settings["endpoint"],
                    headers=dict(settings["headers"]),
                    **({"timeout": timeout / 1000} if timeout else {}),
                )
            )
    return exporters


class Converter:
    """Finished-span tuples into the SDK's `ReadableSpan`s, for one process's resource."""

    def __init__(self, settings: dict[str, Any], pid: int) -> None:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk import trace as sdk  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

        attributes: dict[str, str | int] = dict(settings["resource"])
        attributes.update({"service.name": settings["service_name"], "process.pid": pid})
        self.resource = Resource.create(attributes)
        self.scope = InstrumentationScope("servekit")
        self._trace = trace
        self._sdk = sdk
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._kinds = {kind.value: kind for kind in trace.SpanKind}
        self._unset = trace.Status(trace.StatusCode.UNSET)

    def convert(self, finished: tuple[Any, ...]) -> Any:
        """One `ReadableSpan` from a `tracing.Span.FIELDS` tuple."""
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


def main() -> None:
    """Export the spans of stdin until it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the server, which ends our input
    stream = sys.stdin.buffer
    received = frames(stream)
    settings, pid = next(received)
    exporters = make_exporters(settings)
    converter = Converter(settings, pid)
    for batch in received:
        spans = [converter.convert(finished) for finished in batch]
        for exporter in exporters:
            try:
                exporter.export(spans)
            except Exception as exc:  # one bad batch never stops the exports that follow
                print(f"servekit span exporter: {type(exc).__name__}: {exc}", file=sys.stderr)
    for exporter in exporters:
        exporter.shutdown()


if __name__ == "__main__":
    main()
