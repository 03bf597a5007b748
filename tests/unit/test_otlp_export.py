"""The exporter process's encoding: span tuples in, an `ExportTraceServiceRequest` out (decoded
with opentelemetry-proto); and its settings from the `OTEL_*` variables."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from servekit._telemetry.otlp_export import Encoder, key_values, string_attribute
from servekit._telemetry.tracing import tracing_settings
from servekit.errors import DeploymentOptionError

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SETTINGS = {"service_name": "shop", "resource": (("deployment.environment", "prod"),)}


def _values(attributes: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in attributes}


def test_a_batch_is_one_request_with_the_resource_the_scope_and_every_field_of_its_spans() -> None:
    encoder = Encoder(SETTINGS, 4242)
    server = (TRACE, 1, 0, "POST /x", 1, 10, 20, {"http.route": "/x", "code": 200, "ok": True, "r": 0.5},
              None, (2, "HTTP 500"), [("exception", 15, {"exception.type": "ValueError"})])  # fmt: skip
    batch = (TRACE, 2, 1, "batch m", 0, 12, 18, {"http.route": "/x"}, ((TRACE, 3), (7, 4)), None, None)
    request = ExportTraceServiceRequest()
    for _ in range(2):  # the attribute cache serves the second encoding
        request.ParseFromString(encoder.encode([server, batch]))
    (resource_spans,) = request.resource_spans
    resource = _values(resource_spans.resource.attributes)
    assert resource["service.name"] == "shop"
    assert resource["deployment.environment"] == "prod"
    assert resource["process.pid"] == 4242
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "servekit"
    first, second = scope_spans.spans
    assert (first.trace_id.hex(), first.span_id, first.parent_span_id) == (
        f"{TRACE:032x}",
        b"\0" * 7 + b"\1",
        b"",
    )
    assert (first.name, first.kind, first.start_time_unix_nano, first.end_time_unix_nano) == (
        "POST /x", Span.SpanKind.SPAN_KIND_SERVER, 10, 20,
    )  # fmt: skip
    assert _values(first.attributes) == {"http.route": "/x", "code": 200, "ok": True, "r": 0.5}
    assert (first.status.code, first.status.message) == (Status.StatusCode.STATUS_CODE_ERROR, "HTTP 500")
    (event,) = first.events
    assert (event.name, event.time_unix_nano, _values(event.attributes)) == (
        "exception", 15, {"exception.type": "ValueError"},
    )  # fmt: skip
    assert second.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert second.parent_span_id == first.span_id
    assert second.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert [(link.trace_id.hex(), int.from_bytes(link.span_id, "big")) for link in second.links] == [
        (f"{TRACE:032x}", 3), (f"{7:032x}", 4),
    ]  # fmt: skip


def test_timeout_and_compression_come_from_the_standard_variables() -> None:
    settings = tracing_settings(
        True, "Api", {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    )
    assert settings is not None
    assert (settings.timeout_s, settings.compression) == (2.5, "gzip")
    with pytest.raises(DeploymentOptionError, match="OTEL_EXPORTER_OTLP_COMPRESSION='zstd'"):
        tracing_settings(True, "Api", {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})


@pytest.mark.parametrize("value", ["", "a", "é" * 70, "x" * 20000])
def test_a_string_attribute_is_encoded_as_the_generated_messages_encode_it(value: str) -> None:
    expected = Span(attributes=key_values({"servekit.request_id": value})).SerializeToString()
    assert string_attribute("servekit.request_id", value) == expected
