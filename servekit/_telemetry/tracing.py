"""Tracing: the standard `OTEL_*` variables in, OpenTelemetry-compatible spans across every hop out.

In: `tracing_settings(enabled, service_name, environ)` reads the standard variables into a
`TracingSettings` (pure data, so it travels to worker processes and Ray actors, where the
caller's environment is not); `start_tracing(settings)` starts this process's span recorder and
its exporter process and makes it the process's `active()` tracing, which `Tracing.shutdown()`
flushes and ends.

Out: the helpers the edge, handles, replica sets, replicas and batch queues call while
`active()` is not None: a span made current around a call, spans recorded after the fact
(queue and batch waits), a batch span linked to its items' spans, and the W3C carrier
(`traceparent`) a call takes to another process.

The hot path is servekit's own and small: a span is a slots object (ids from
`random.getrandbits`, times from `time.time_ns`), the current one a context variable, samplers
decide as OpenTelemetry's do, and a finished span is a tuple of primitives queued for a
background thread, which hands batches to an exporter process (`otlp_export`: OTLP protobuf
built with opentelemetry-proto and POSTed), so protobuf and HTTP cost the serving process nothing.
No OpenTelemetry module is imported here: a default install (without the `otel` extra) and
tracing off pay one `active()` check per call and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import urllib.parse
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from random import getrandbits as _getrandbits
from time import time_ns as _time_ns
from types import TracebackType
from typing import Any, Literal, TypeVar

from servekit.errors import DeploymentOptionError

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
_log = logging.getLogger("servekit.tracing")

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
    timeout_s: float = 10.0
    """How long one batch may take to export, retries included (`OTEL_EXPORTER_OTLP_TIMEOUT`)."""
    compression: Literal["none", "gzip"] = "none"
    certificate: str | None = None
    """The CA bundle an https endpoint is checked with (`OTEL_EXPORTER_OTLP_CERTIFICATE`)."""


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
        timeout_s=_timeout_s(environ),
        compression=_compression(environ),
        certificate=_traces_or_all(environ, "CERTIFICATE")[1] or None,
    )


def _traces_or_all(environ: Mapping[str, str], suffix: str) -> tuple[str, str]:
    """(name, value) of `OTEL_EXPORTER_OTLP_TRACES_<suffix>`, else of `OTEL_EXPORTER_OTLP_<suffix>`."""
    for name in (f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return "", ""


def _timeout_s(environ: Mapping[str, str]) -> float:
    """The export timeout: `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`, else `OTEL_BSP_EXPORT_TIMEOUT`
    (milliseconds, as the spec has both), else 10 s."""
    name = _traces_or_all(environ, "TIMEOUT")[0]
    if not name and environ.get("OTEL_BSP_EXPORT_TIMEOUT", "").strip():
        name = "OTEL_BSP_EXPORT_TIMEOUT"
    return _positive_int(environ, name) / 1000 if name else 10.0


def _compression(environ: Mapping[str, str]) -> Literal["none", "gzip"]:
    name, value = _traces_or_all(environ, "COMPRESSION")
    if value.lower() in ("", "none"):
        return "none"
    if value.lower() == "gzip":
        return "gzip"
    raise DeploymentOptionError(
        f"{name}={value!r}: servekit compresses OTLP with 'gzip' or not at all ('none')"
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
    """Start recording spans in this process, exported by an exporter process of its own, and
    make this the process's `active()` tracing.

    Raises `ImportError` naming the extra when opentelemetry-proto (which the exporter process
    encodes OTLP with) or, for the console exporter, the OpenTelemetry SDK is not installed;
    this process itself never imports them.
    """
    needed = {"otlp": "opentelemetry.proto.trace", "console": "opentelemetry.sdk.trace"}
    for exporter in settings.exporters:
        if importlib.util.find_spec(needed[exporter]) is None:
            what = (
                "OTLP export needs opentelemetry-proto"
                if exporter == "otlp"
                else "the console exporter needs the OpenTelemetry SDK"
            )
            raise ImportError(f"{what}: {INSTALL_HINT}")
    batch = settings.batch
    sink = ExporterProcess(settings, os.getpid()) if settings.exporters else None
    recorder = SpanRecorder(
        sink.send if sink is not None else None,
        max_queue=batch.get("max_queue_size", 2048),
        max_batch=batch.get("max_export_batch_size", 512),
        delay_s=batch.get("schedule_delay_millis", 5000) / 1000,
        on_close=sink.close if sink is not None else None,
    )
    started = _PROCESS.current = Tracing(make_sampler(settings.sampler, settings.sampler_arg), recorder)
    return started


# --- sampling and W3C trace context ------------------------------------------------------------

_ID_64 = (1 << 64) - 1
Sampler = Callable[["SpanContext | Span | None", int], bool]
"""(the parent's context or None at a root, the trace id) -> whether the span is sampled."""


def make_sampler(name: str, ratio: float = 1.0) -> Sampler:
    """The sampler an `OTEL_TRACES_SAMPLER` name means, deciding as OpenTelemetry's SDK does.

    `traceidratio` samples a trace when the low 64 bits of its id are below `ratio * 2**64`
    (so every process decides the same for one trace); `parentbased_*` follow the parent's
    sampled flag and use the named sampler at roots only.
    """
    bound = round(ratio * (_ID_64 + 1))
    root: Callable[[int], bool]
    plain = name.removeprefix("parentbased_")
    if plain == "always_on":
        root = _always
    elif plain == "always_off":
        root = _never
    else:
        root = lambda trace_id: (trace_id & _ID_64) < bound  # noqa: E731
    if not name.startswith("parentbased_"):
        return lambda parent, trace_id: root(trace_id)
    return lambda parent, trace_id: root(trace_id) if parent is None else parent.sampled


def _always(trace_id: int) -> bool:
    return True


def _never(trace_id: int) -> bool:
    return False


_TRACEPARENT = re.compile(r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$")


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The span context a W3C `traceparent` header names, or None when it is absent or malformed
    (the request then starts a trace of its own, as the spec says)."""
    if not value:
        return None
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version, trace_hex, span_hex, flags = found.group(1, 2, 3, 4)
    if version == "ff" or (version == "00" and found.group(5)):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(context: SpanContext | Span) -> str:
    """The W3C `traceparent` header of `context`."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{'01' if context.sampled else '00'}"


class SpanContext:
    """A span's identity as it travels: its trace, its id, whether it is sampled."""

    __slots__ = ("sampled", "span_id", "trace_id")

    def __init__(self, trace_id: int, span_id: int, sampled: bool) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpanContext) and (
            (self.trace_id, self.span_id, self.sampled) == (other.trace_id, other.span_id, other.sampled)
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id))

    def __repr__(self) -> str:
        return f"SpanContext({format_traceparent(self)!r})"


# --- spans and their recorder ----------------------------------------------------------------

KINDS = {"internal": 0, "server": 1, "client": 2}
"""OpenTelemetry's span kinds by name (`SpanKind` values)."""
STATUS_ERROR = 2
"""OpenTelemetry's `StatusCode.ERROR`."""

FinishedSpan = tuple[Any, ...]
"""A finished span as primitives, in `Span.FIELDS` order: what the exporter process receives."""


class Span:
    """One recording (sampled) span: ids, name, kind, times, attributes, links, status, events.

    A `with` block makes it current and ends it after (an exception marks it failed); ended, it
    goes to its recorder as a tuple of primitives (`FIELDS`).
    """

    __slots__ = (
        "_add",
        "_bridge",
        "_token",
        "attributes",
        "events",
        "kind",
        "links",
        "name",
        "parent_id",
        "span_id",
        "start",
        "status",
        "trace_id",
    )
    sampled = True
    FIELDS = ("trace_id", "span_id", "parent_id", "name", "kind", "start", "end", "attributes",
              "links", "status", "events")  # fmt: skip

    def __init__(
        self,
        add: Callable[[FinishedSpan], None],
        trace_id: int,
        parent_id: int,
        name: str,
        kind: int,
        *,
        attributes: dict[str, Any] | None = None,
        start: int = 0,
        links: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        self._add = add
        self.trace_id = trace_id
        self.span_id = _getrandbits(64) or 1
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start = start or _time_ns()
        self.attributes = attributes
        self.links = links
        self.status: tuple[int, str] | None = None
        self.events: list[tuple[str, int, dict[str, str]]] | None = None
        self._token: Token[Current | None] | None = None
        self._bridge: object = None

    def __enter__(self) -> Span:
        self._token = _current.set(self)
        if _modules.get("opentelemetry.trace") is not None:
            self._bridge = _bridge_enter(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # `_leave` and `end` inlined for the common case: one call per span, not three.
        if self._bridge is not None:
            _bridge_exit(self._bridge)
            self._bridge = None
        token = self._token
        if token is not None:
            _current.reset(token)
            self._token = None
        add = self._add
        if exc is not None or add is _ended:
            self.end(exc)
            return
        self._add = _ended
        add((self.trace_id, self.span_id, self.parent_id, self.name, self.kind, self.start,
             _time_ns(), self.attributes, self.links, self.status, self.events))  # fmt: skip

    def _leave(self) -> None:
        if self._bridge is not None:
            _bridge_exit(self._bridge)
            self._bridge = None
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def step(self) -> _Step:
        """A `with` block that makes the span current without ending it (a stream's chunk)."""
        return _Step(self)

    def update_name(self, name: str) -> None:
        """Rename the span (the edge names it after the matched route)."""
        self.name = name

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        """Set one attribute (on a copy: the dict given to `Tracing.span` may be shared)."""
        self.attributes = {**(self.attributes or {}), key: value}

    def fail(self, description: str, exc: BaseException | None = None) -> None:
        """Mark the span failed, with an `exception` event when `exc` is given."""
        self.status = (STATUS_ERROR, description)
        if exc is not None:
            event = {"exception.type": type(exc).__qualname__, "exception.message": str(exc)}
            self.events = [*(self.events or ()), ("exception", _time_ns(), event)]

    def end(self, exc: BaseException | None = None, at: int = 0) -> None:
        """End the span (once) at `at` (default now) and record it; `exc` marks it failed."""
        add = self._add
        if add is _ended:
            return
        self._add = _ended
        if exc is not None and not isinstance(exc, GeneratorExit | StopAsyncIteration):
            if isinstance(exc, asyncio.CancelledError):
                self.fail("cancelled")
            else:
                self.fail(f"{type(exc).__name__}: {exc}", exc)
        add((self.trace_id, self.span_id, self.parent_id, self.name, self.kind, self.start,
             at or _time_ns(), self.attributes, self.links, self.status, self.events))  # fmt: skip

    # The same scope protocol as the unsampled ones.
    close = end


def _ended(span: FinishedSpan) -> None:
    """The recorder of a span already ended: nothing more to record."""


_modules = sys.modules


class SpanRecorder:
    """Collects finished spans and hands them, in batches, to `sink` from a background thread.

    Bounded: past `max_queue` waiting spans, new ones are dropped and counted (a warning says
    how many); a batch leaves every `delay_s`, or as soon as `max_batch` spans wait.
    """

    def __init__(
        self,
        sink: Callable[[list[FinishedSpan]], None] | None,
        *,
        max_queue: int = 2048,
        max_batch: int = 512,
        delay_s: float = 5.0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._delay_s = delay_s
        self._on_close = on_close
        self._spans: deque[FinishedSpan] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._flushing = threading.Lock()
        self.dropped = 0
        self._warned = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="servekit-spans", daemon=True)
        self._thread.start()

    def add(self, span: FinishedSpan) -> None:
        """Queue one finished span (dropped and counted when the queue is full)."""
        spans = self._spans
        waiting = len(spans)
        if waiting >= self._max_queue:
            self.dropped += 1
            return
        spans.append(span)
        if waiting + 1 == self._max_batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Hand every queued span to the sink now."""
        with self._flushing:
            spans = self._spans
            while spans:
                batch = [spans.popleft() for _ in range(min(len(spans), self._max_batch))]
                if self._sink is not None:
                    try:
                        self._sink(batch)
                    except Exception:  # the exporter process is gone: count what is lost
                        self.dropped += len(batch)
                        _log.warning("tracing: the span exporter failed", exc_info=True)
                        self._sink = None
                self.sent += len(batch)
            if self.dropped > self._warned:
                _log.warning(
                    "tracing: dropped %d spans: more than %d waited for export (raise "
                    "OTEL_BSP_MAX_QUEUE_SIZE, lower the sampling ratio, or check the collector)",
                    self.dropped - self._warned,
                    self._max_queue,
                )
                self._warned = self.dropped

    def close(self) -> None:
        """Export what is queued and stop (the sink's `on_close` waits for its export)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()
        if self._on_close is not None:
            self._on_close()


class ExporterProcess:
    """The process that encodes spans to OTLP and sends them (`servekit._telemetry.otlp_export`),
    fed with pickled batches of `FinishedSpan` over its stdin, so the serving process spends
    neither its CPU nor its GIL on protobuf and HTTP."""

    def __init__(self, settings: TracingSettings, pid: int) -> None:
        script = os.path.join(os.path.dirname(__file__), "otlp_export.py")  # a script: no servekit import
        self._process = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, close_fds=True)
        self._lock = threading.Lock()
        self._write(pickle.dumps((dataclasses.asdict(settings), pid), protocol=pickle.HIGHEST_PROTOCOL))

    def send(self, batch: list[FinishedSpan]) -> None:
        """Hand one batch over (blocks while the process is busy exporting)."""
        self._write(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))

    def _write(self, payload: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        with self._lock:
            stdin.write(len(payload).to_bytes(8, "little") + payload)
            stdin.flush()

    def close(self, timeout_s: float = 30.0) -> None:
        """End the input and wait for the process to export what it has and exit."""
        stdin = self._process.stdin
        if stdin is not None:
            with contextlib.suppress(OSError), self._lock:
                stdin.close()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# --- the helpers servekit's hops call ----------------------------------------------------------

Current = SpanContext | Span
_current: ContextVar[Current | None] = ContextVar("servekit_span", default=None)


class Tracing:
    """A process's sampler and span recorder, and the span helpers servekit's hops call."""

    def __init__(self, sampler: Sampler, recorder: SpanRecorder, parent_based: bool = True) -> None:
        self._sampler = sampler
        self.recorder = recorder
        self._add = recorder.add
        self._parent_based = parent_based

    def shutdown(self) -> None:
        """Export what is buffered and stop; the process no longer traces."""
        if _PROCESS.current is self:
            _PROCESS.current = None
        self.recorder.close()

    def span(
        self,
        name: str,
        kind: Literal["server", "client", "internal"] = "internal",
        attributes: dict[str, Any] | None = None,
        parent: Current | None = None,
    ) -> Span | _Unsampled:
        """A span, current inside the `with` block (which gets the `Span`, or None when it is not
        sampled) and ended after it (an exception marks it failed).

        `parent` is a remote parent (from `extract`); by default the current span. Under an
        unsampled current span (and a parent-based sampler) nothing is made: one check.
        """
        if parent is None:
            parent = _current.get()
            if parent is not None and not parent.sampled and self._parent_based:
                return _UNSAMPLED
        trace_id = parent.trace_id if parent is not None else (_getrandbits(128) or 1)
        if not self._sampler(parent, trace_id):
            return _UnsampledRoot(SpanContext(trace_id, _getrandbits(64) or 1, False))
        parent_id = parent.span_id if parent is not None else 0
        return Span(self._add, trace_id, parent_id, name, KINDS[kind], attributes=attributes)

    def recording(self) -> bool:
        """Whether a span made now would be recorded (the current one is sampled, or none is
        current and the sampler may record a root); cheap, for skipping work before `span`."""
        current = _current.get()
        return current is None or current.sampled or not self._parent_based

    async def traced(self, call: Awaitable[T], name: str, attributes: dict[str, Any] | None = None) -> T:
        """Await `call` inside a client span."""
        with self.span(name, "client", attributes):
            return await call

    async def traced_stream(
        self,
        chunks: AsyncIterator[T],
        name: str,
        kind: Literal["server", "client"],
        attributes: dict[str, Any] | None = None,
    ) -> AsyncGenerator[T]:
        """Yield `chunks` inside one span, current while each chunk is produced."""
        scope = self.span(name, kind, attributes)
        try:
            while True:
                with scope.step():
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                yield chunk
        except BaseException as exc:
            scope.close(exc)
            raise
        finally:
            try:
                await chunks.aclose()  # type: ignore[attr-defined]
            finally:
                scope.close(None)

    def record(self, name: str, start_ns: int, attributes: dict[str, Any] | None = None) -> None:
        """A span from `start_ns` to now under the current span, when that one is sampled."""
        parent = _current.get()
        if parent is None or not parent.sampled:
            return
        Span(self._add, parent.trace_id, parent.span_id, name, 0, attributes=attributes, start=start_ns).end()

    def sampled(self) -> Current | None:
        """The current span's context when it is sampled (its children are recorded), else None."""
        current = _current.get()
        return current if current is not None and current.sampled else None

    def batch_span(
        self, name: str, items: Sequence[tuple[Current, int]], attributes: dict[str, Any] | None = None
    ) -> Span:
        """The span of one batch, linked to each item's span, and each item's wait for it.

        `items` are (the item's span context, when it arrived in ns). The batch span's parent is
        the first item's span (so its trace shows the compute); each item gets a "batch wait"
        span, from its arrival to now, linked to the batch span.
        """
        first = items[0][0]
        links = tuple((item.trace_id, item.span_id) for item, _ in items)
        span = Span(self._add, first.trace_id, first.span_id, name, 0, attributes=attributes, links=links)
        back = ((span.trace_id, span.span_id),)
        now = _time_ns()
        for item, arrived in items:
            wait = Span(self._add, item.trace_id, item.span_id, "batch wait", 0, start=arrived, links=back)
            wait.end(at=now)
        return span

    def carrier(self) -> dict[str, str]:
        """The current trace context as W3C headers (`traceparent`), for another process."""
        current = _current.get()
        return {} if current is None else {"traceparent": format_traceparent(current)}

    def extract(self, carrier: Mapping[str, str]) -> SpanContext | None:
        """The span context that `carrier` (W3C headers) continues; None when absent or malformed."""
        return parse_traceparent(carrier.get("traceparent"))

    def attach(self, carrier: Mapping[str, str]) -> object:
        """Make the trace context in `carrier` current; returns a token for `detach`."""
        return _current.set(self.extract(carrier))

    def detach(self, token: object) -> None:
        """Restore the context that was current before `attach`."""
        _current.reset(token)  # type: ignore[arg-type]

    def fail(self, span: Span, description: str) -> None:
        """Mark `span` failed (a 5xx answer, say) without an exception."""
        span.fail(description)

    def trace_id(self) -> str | None:
        """The current trace's id (32 hex digits), or None outside a span."""
        current = _current.get()
        return format(current.trace_id, "032x") if current is not None else None


class _Unsampled:
    """The scope of a span not made (its parent was not sampled): nothing to enter or end."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def step(self) -> _Unsampled:
        return self

    def close(self, exc: BaseException | None) -> None:
        return None


_UNSAMPLED = _Unsampled()


class _UnsampledRoot(_Unsampled):
    """The scope of a trace the sampler left out: its context is current (so every hop below
    knows, and passes the decision on in `traceparent`), but nothing is recorded."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: SpanContext) -> None:
        self._context = context
        self._token: Token[Current | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._context)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def step(self) -> _UnsampledRoot:
        return self


class _Step:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> None:
        self._span.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._span._leave()


# --- user code's own OpenTelemetry spans -------------------------------------------------------


def _otel_trace() -> Any:
    """OpenTelemetry's API module, when user code imported it (servekit never does itself)."""
    return sys.modules.get("opentelemetry.trace")


def _bridge_enter(span: Span) -> object:
    """Make `span` OpenTelemetry's current span too, when user code configured a tracer provider,
    so the spans it makes nest under servekit's; a token for `_bridge_exit`, or None."""
    trace = _otel_trace()
    if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":  # none configured
        return None
    from opentelemetry import context  # noqa: PLC0415

    span_context = trace.SpanContext(
        span.trace_id, span.span_id, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
    )
    return context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_context)))


def _bridge_exit(token: object) -> None:
    from opentelemetry import context  # noqa: PLC0415

    context.detach(token)  # type: ignore[arg-type]
