"""A small OTLP/HTTP trace receiver: a stand-in for an OpenTelemetry Collector on this machine.

It takes what servekit's exporter sends to ``/v1/traces`` and keeps the spans (decoded with
opentelemetry-proto, which the ``otel`` extra installs), or, with ``decode=False``, only counts
the requests and bytes: a sink that costs the server nothing to talk to, for benchmarks.

    python examples/observability/otlp_receiver.py --port 4318          # prints a count per second
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 servekit serve app.py:app --tracing
"""

from __future__ import annotations

import argparse
import http.server
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    """One received span: its name, kind, ids (hex) and the span ids it links to."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]


class OtlpReceiver:
    """Listens on `host`:`port` (0: a free port) in a background thread until `close()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, decode: bool = True) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.bytes = 0
        self._decode = decode
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver._take(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """The URL to give servekit as ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _take(self, body: bytes) -> None:
        spans = _decode(body) if self._decode else []
        with self._lock:
            self.requests += 1
            self.bytes += len(body)
            self.spans.extend(spans)

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


def _decode(body: bytes) -> list[Span]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return [
        Span(
            name=span.name,
            kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_id=span.parent_span_id.hex(),
            links=tuple(link.span_id.hex() for link in span.links),
        )
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="an OTLP/HTTP trace sink that counts what it gets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    receiver = OtlpReceiver(args.host, args.port, decode=False)
    print(f"receiving OTLP/HTTP traces at {receiver.endpoint}/v1/traces (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1)
            print(f"exports: {receiver.requests}  bytes: {receiver.bytes}", flush=True)
    except KeyboardInterrupt:
        receiver.close()


if __name__ == "__main__":
    main()
