"""OpenTelemetry tracing: the standard `OTEL_*` variables in, spans across every hop out.

In: `tracing_settings(enabled, service_name, environ)` reads the standard variables into a
`TracingSettings` (pure data, so it travels to worker processes and Ray actors, where the
caller's environment is not); `start_tracing(settings)` builds the SDK pipeline (a sampler, a
batch span processor, the OTLP/HTTP exporter) in the process that runs it and makes it the
process's `active()` tracing, which `Tracing.shutdown()` flushes and ends.

Out: the helpers the edge, handles, replica sets, replicas and batch queues call while
`active()` is not None: a span made current around a call, spans recorded after the fact
(queue and batch waits), a batch span linked to its items' spans, and the W3C carrier
(`traceparent`, `tracestate`) a call takes to another process.

Nothing here imports OpenTelemetry until tracing starts: a default install (without the
`otel` extra) and tracing off pay one `active()` check per call and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from servekit.errors import DeploymentOptionError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Span, SpanContext, Tracer

T = TypeVar("T")

Exporter = Literal["otlp", "console", "none"]
EXPORTERS: tuple[Exporter, ...] = ("otlp", "console", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
"""Where OTLP/HTTP spans go without `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`: a local collector."""
INSTALL_HINT = "pip install 'servekit[otel]'"

Attributes = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class TracingSettings:
    """How one app traces, as read from the caller's `OTEL_*` variables (the same in every process)."""

    service_name: str
    exporters: tuple[Exporter, ...] = ("otlp",)
    endpoint: str = DEFAULT_ENDPOINT
    headers: tuple[tuple[str, str], ...] = ()
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource: tuple[tuple[str, str], ...] = ()
    batch: Mapping[str, int] = field(default_factory=dict)
    """The batch span processor's options that were set (`OTEL_BSP_*`), by keyword."""


_BSP = {
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
}


def tracing_settings(
    enabled: bool | None, service_name: str, environ: Mapping[str, str]
) -> TracingSettings | None:
    """The app's tracing settings, or None when tracing is off.

    `enabled=None` traces when `OTEL_TRACES_EXPORTER` names an exporter; True traces (with
    the OTLP exporter unless that variable says otherwise); False never does, nor does
    ``OTEL_SDK_DISABLED=true``. Raises `DeploymentOptionError` naming a bad variable.
    """
    exporter_names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if enabled is False or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if enabled is None and exporter_names.lower() in ("", "none"):
        return None
    _check_protocol(environ)
    resource = _pairs(environ, "OTEL_RESOURCE_ATTRIBUTES")
    service = environ.get("OTEL_SERVICE_NAME") or dict(resource).get("service.name") or service_name
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    return TracingSettings(
        service_name=service,
        exporters=_exporters(exporter_names or "otlp"),
        endpoint=_endpoint(environ),
        headers=_pairs(environ, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        or _pairs(environ, "OTEL_EXPORTER_OTLP_HEADERS"),
        sampler=_sampler(sampler),
        sampler_arg=_sampler_arg(sampler, environ.get("OTEL_TRACES_SAMPLER_ARG")),
        resource=resource,
        batch={keyword: _positive_int(environ, name) for name, keyword in _BSP.items() if environ.get(name)},
    )


def _exporters(names: str) -> tuple[Exporter, ...]:
    chosen: list[Exporter] = []
    for name in (part.strip().lower() for part in names.split(",") if part.strip()):
        if name not in EXPORTERS:
            raise DeploymentOptionError(
                f"OTEL_TRACES_EXPORTER={names!r}: servekit exports traces with 'otlp' (OTLP over HTTP), "
                "'console' or 'none'; send other formats through an OpenTelemetry Collector"
            )
        if name != "none":
            chosen.append(name)
    return tuple(chosen)


def _check_protocol(environ: Mapping[str, str]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip()
        if value and value != "http/protobuf":
            raise DeploymentOptionError(
                f"{name}={value!r}: servekit exports OTLP over HTTP ('http/protobuf'); point "
                "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port, like http://collector:4318"
            )
        if value:
            return


def _endpoint(environ: Mapping[str, str]) -> str:
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    url = traces or (base.rstrip("/") + "/v1/traces" if base else DEFAULT_ENDPOINT)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if traces else "OTEL_EXPORTER_OTLP_ENDPOINT"
        raise DeploymentOptionError(
            f"{name}={url!r} is not an http(s) URL; use one like http://collector:4318"
        )
    return url


def _pairs(environ: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """`k1=v1,k2=v2` (values URL-encoded, as the spec has it) as pairs."""
    pairs = []
    for item in environ.get(name, "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DeploymentOptionError(f"{name}: {item.strip()!r} is not key=value, like 'team=ml,env=prod'")
        pairs.append((key.strip(), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


def _sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise DeploymentOptionError(
            f"OTEL_TRACES_SAMPLER={name!r} is unknown; use one of {', '.join(SAMPLERS)}"
        )
    return name


def _sampler_arg(sampler: str, value: str | None) -> float:
    if value is None or not value.strip() or not sampler.endswith("traceidratio"):
        return 1.0
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise DeploymentOptionError(
            f"OTEL_TRACES_SAMPLER_ARG={value!r} must be a sampling ratio from 0 to 1, like 0.01 for 1%"
        )
    return ratio


def _positive_int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name].strip()
    if not value.isdigit() or int(value) < 1:
        raise DeploymentOptionError(f"{name}={value!r} must be a positive integer")
    return int(value)


class _ProcessTracing:
    """The tracing of this process (like OpenTelemetry's global tracer provider): set by
    `start_tracing`, cleared by `Tracing.shutdown`."""

    current: Tracing | None = None


_PROCESS = _ProcessTracing()


def active() -> Tracing | None:
    """This process's tracing, or None when it does not trace."""
    return _PROCESS.current


def start_tracing(settings: TracingSettings) -> Tracing:
    """Build the SDK pipeline for `settings` and make it this process's tracing.

    Raises `ImportError` naming the extra when the OpenTelemetry SDK is not installed. The
    provider also becomes OpenTelemetry's global one when none is set, so spans that user
    code makes with `opentelemetry.trace.get_tracer(...)` join servekit's traces.
    """
    try:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"tracing needs the OpenTelemetry SDK: {INSTALL_HINT}") from exc
    attributes: dict[str, str | int] = dict(settings.resource)
    attributes.update({"service.name": settings.service_name, "process.pid": os.getpid()})
    resource = Resource.create(attributes)
    provider = TracerProvider(sampler=_make_sampler(settings), resource=resource, shutdown_on_exit=False)
    for exporter in settings.exporters:
        options = settings.batch
        processor = BatchSpanProcessor(
            _make_exporter(exporter, settings),
            max_queue_size=options.get("max_queue_size"),
            schedule_delay_millis=options.get("schedule_delay_millis"),
            max_export_batch_size=options.get("max_export_batch_size"),
            export_timeout_millis=options.get("export_timeout_millis"),
        )
        provider.add_span_processor(processor)
    if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":  # none set yet
        trace.set_tracer_provider(provider)
    started = _PROCESS.current = Tracing(provider, settings.sampler.startswith("parentbased_"))
    return started


def _make_sampler(settings: TracingSettings) -> Sampler:
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415

    ratio = sampling.TraceIdRatioBased(settings.sampler_arg)
    plain: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
    }
    name = settings.sampler.removeprefix("parentbased_")
    root = plain[name]
    return sampling.ParentBased(root) if settings.sampler.startswith("parentbased_") else root


def _make_exporter(name: Exporter, settings: TracingSettings) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"the OTLP trace exporter is missing: {INSTALL_HINT}") from exc
    return OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers))


class Tracing:
    """A process's tracer and the span helpers servekit's hops call."""

    def __init__(self, provider: TracerProvider, parent_based: bool = True) -> None:
        from opentelemetry import context, propagate, trace  # noqa: PLC0415

        self.provider = provider
        self._parent_based = parent_based
        """Whether a child of an unsampled span is never sampled (so need not be made at all)."""
        self.tracer: Tracer = provider.get_tracer("servekit")
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._kinds = {"server": trace.SpanKind.SERVER, "client": trace.SpanKind.CLIENT}

    def shutdown(self) -> None:
        """Export what is buffered and stop; the process no longer traces."""
        if _PROCESS.current is self:
            _PROCESS.current = None
        self.provider.force_flush()
        self.provider.shutdown()

    def span(
        self,
        name: str,
        kind: Literal["server", "client", "internal"] = "internal",
        attributes: Attributes | None = None,
        parent: Any = None,
    ) -> CurrentSpan | _Unsampled:
        """A span, current inside the `with` block and ended after it (an exception marks it failed).

        Under an unsampled span (and a parent-based sampler) it is not made at all: the block
        runs under that span, which carries the trace on at the cost of one check.
        """
        if parent is None and self._unsampled():
            return _UNSAMPLED
        span = self.tracer.start_span(
            name, parent, self._kinds.get(kind, self._trace.SpanKind.INTERNAL), attributes
        )
        return CurrentSpan(self, span)

    async def traced(self, call: Awaitable[T], name: str, attributes: Attributes | None = None) -> T:
        """Await `call` inside a client span."""
        with self.span(name, "client", attributes):
            return await call

    async def traced_stream(
        self,
        chunks: AsyncIterator[T],
        name: str,
        kind: Literal["server", "client"],
        attributes: Attributes | None = None,
    ) -> AsyncGenerator[T]:
        """Yield `chunks` inside one span, current while each chunk is produced."""
        if self._unsampled():
            async for chunk in chunks:
                yield chunk
            return
        span = self.tracer.start_span(name, None, self._kinds[kind], attributes)
        scope = CurrentSpan(self, span, end=False)
        try:
            while True:
                with scope:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                yield chunk
        finally:
            try:
                await chunks.aclose()  # type: ignore[attr-defined]
            finally:
                span.end()

    def record(self, name: str, start_ns: int, attributes: Attributes | None = None) -> None:
        """A span from `start_ns` to now under the current span, when that one is sampled."""
        if self.sampled() is None:
            return
        self.tracer.start_span(name, None, attributes=attributes, start_time=start_ns).end()

    def _unsampled(self) -> bool:
        """Whether the current span is a real one that was not sampled, so its children are not."""
        if not self._parent_based:
            return False
        span_context = self._trace.get_current_span().get_span_context()
        return span_context.is_valid and not span_context.trace_flags.sampled

    def sampled(self) -> SpanContext | None:
        """The current span's context when it is sampled (its children are recorded), else None."""
        span_context = self._trace.get_current_span().get_span_context()
        return span_context if span_context.trace_flags.sampled else None

    def batch_span(
        self, name: str, items: Sequence[tuple[SpanContext, int]], attributes: Attributes | None = None
    ) -> CurrentSpan:
        """The span of one batch, linked to each item's span, and each item's wait for it.

        `items` are (the item's span context, when it arrived in ns). The batch span's parent is
        the first item's span (so its trace shows the compute); each item gets a "batch wait"
        span, from its arrival to now, linked to the batch span.
        """
        trace = self._trace
        links = [trace.Link(item) for item, _ in items]
        parent = trace.set_span_in_context(trace.NonRecordingSpan(items[0][0]))
        span = self.tracer.start_span(name, parent, links=links, attributes=attributes)
        back = [trace.Link(span.get_span_context())]
        now = time.time_ns()
        for item, arrived in items:
            context = trace.set_span_in_context(trace.NonRecordingSpan(item))
            self.tracer.start_span("batch wait", context, links=back, start_time=arrived).end(now)
        return CurrentSpan(self, span)

    def carrier(self) -> dict[str, str]:
        """The current trace context as W3C headers (`traceparent`, `tracestate`), for another process."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        return carrier

    def extract(self, carrier: Mapping[str, str]) -> Any:
        """The OpenTelemetry context that `carrier` (W3C headers) continues."""
        return self._propagate.extract(carrier)

    def attach(self, carrier: Mapping[str, str]) -> object:
        """Make the trace context in `carrier` current; returns a token for `detach`."""
        return self._context.attach(self._propagate.extract(carrier))

    def detach(self, token: object) -> None:
        """Restore the context that was current before `attach`."""
        self._context.detach(token)  # type: ignore[arg-type]

    def fail(self, span: Span, description: str) -> None:
        """Mark `span` failed (a 5xx answer, say) without an exception."""
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))

    def trace_id(self) -> str | None:
        """The current trace's id (32 hex digits), or None outside a span."""
        span_context = self._trace.get_current_span().get_span_context()
        return format(span_context.trace_id, "032x") if span_context.is_valid else None


class _Unsampled:
    """The scope of a span not made (its parent was not sampled): nothing to enter or end."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_UNSAMPLED = _Unsampled()


class CurrentSpan:
    """A started span made current for a `with` block (and ended after it, unless `end=False`)."""

    __slots__ = ("_end", "_token", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span, end: bool = True) -> None:
        self._tracing = tracing
        self.span = span
        self._end = end
        self._token: object = None

    def __enter__(self) -> Span:
        trace = self._tracing._trace
        self._token = self._tracing._context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tracing._context.detach(self._token)
        if exc is not None and not isinstance(exc, GeneratorExit | StopAsyncIteration):
            self.fail(exc)
        if self._end:
            self.span.end()

    def fail(self, exc: BaseException) -> None:
        """Mark the span failed by `exc`."""
        trace = self._tracing._trace
        if isinstance(exc, asyncio.CancelledError):
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, "cancelled"))
            return
        self.span.record_exception(exc)
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
