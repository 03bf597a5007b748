"""The telemetry settings and log formats as pure functions: `OTEL_*` variables in, settings out;
records in, lines out."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from servekit._telemetry.logs import (
    FIELDS_ATTR,
    JsonFormatter,
    LogFields,
    RequestFields,
    TextFormatter,
    json_line,
)
from servekit._telemetry.tracing import DEFAULT_ENDPOINT, TracingSettings, tracing_settings
from servekit.errors import DeploymentOptionError


@pytest.mark.parametrize(
    ("enabled", "environ", "on"),
    [
        (None, {}, False),
        (None, {"OTEL_TRACES_EXPORTER": "none"}, False),
        (None, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (True, {}, True),
        (False, {"OTEL_TRACES_EXPORTER": "otlp"}, False),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_when_asked_or_when_an_exporter_is_named(
    enabled: bool | None, environ: dict[str, str], on: bool
) -> None:
    assert (tracing_settings(enabled, "Api", environ) is not None) is on


def test_settings_come_from_the_standard_variables() -> None:
    settings = tracing_settings(
        True,
        "Api",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20x,team=ml",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    assert settings == TracingSettings(
        service_name="Api",
        exporters=("otlp",),
        endpoint="http://collector:4318/v1/traces",
        headers=(("authorization", "Bearer x"), ("team", "ml")),
        sampler="parentbased_traceidratio",
        sampler_arg=0.01,
        resource=(("deployment.environment", "prod"),),
        batch={"schedule_delay_millis": 100},
    )
    named = tracing_settings(
        True, "Api", {"OTEL_SERVICE_NAME": "shop", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:1/t"}
    )
    assert named is not None
    assert (named.service_name, named.endpoint) == ("shop", "http://c:1/t")
    default = tracing_settings(True, "Api", {"OTEL_TRACES_EXPORTER": "none"})
    assert default is not None
    assert (default.exporters, default.endpoint, default.sampler) == (
        (),
        DEFAULT_ENDPOINT,
        "parentbased_always_on",
    )


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "5%"}, "0.01 for 1%"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "not an http(s) URL"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "'team' is not key=value"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY='soon'"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(DeploymentOptionError, match=named.replace("(", r"\(").replace(")", r"\)")):
        tracing_settings(True, "Api", environ)


def _record(message: str = "hello %s", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, message, ("world",), None)
    record.__dict__.update(extra)
    return record


def test_the_filter_stamps_the_request_fields_and_the_process_replica_as_a_fallback() -> None:
    fields = LogFields("req-1", "ab" * 16, None, None)
    record = _record()
    assert RequestFields(lambda: fields, deployment="Model", replica="Model#0").filter(record)
    assert (record.request_id, record.trace_id, record.deployment, record.replica) == (  # type: ignore[attr-defined]
        "req-1", "ab" * 16, "Model", "Model#0",
    )  # fmt: skip
    kept = _record(request_id="given")
    RequestFields(lambda: fields).filter(kept)
    assert kept.request_id == "given"  # type: ignore[attr-defined]


def test_json_lines_hold_the_fields_extras_and_the_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record(request_id="req-1", trace_id=None, deployment="Api", replica="Api#0")
    record.exc_info = exc_info
    record.__dict__[FIELDS_ATTR] = {"status": 500}
    line = json.loads(JsonFormatter().format(record))
    assert {
        key: line[key] for key in ("level", "logger", "message", "request_id", "deployment", "replica")
    } == {
        "level": "INFO",
        "logger": "app",
        "message": "hello world",
        "request_id": "req-1",
        "deployment": "Api",
        "replica": "Api#0",
    }
    assert line["trace_id"] is None
    assert line["status"] == 500
    assert "ValueError: bad" in line["exception"]
    assert line["time"].endswith("+00:00")
    wrapped = json.loads(json_line("printed", replica="Model#0"))
    assert (wrapped["message"], wrapped["replica"], wrapped["request_id"]) == ("printed", "Model#0", None)


def test_text_lines_show_the_request_id_only_within_a_request() -> None:
    formatter = TextFormatter(timestamps=False)
    assert formatter.format(_record(request_id="req-1")) == "INFO app [req-1]: hello world"
    assert formatter.format(_record(request_id=None)) == "INFO app: hello world"
