"""The request context: what travels with each call through every hop and backend.

In: the HTTP edge makes a `RequestContext` per request (the request id, plus the headers,
cookies and query parameters that some router of the app keys on) and sets it as current.
Out: any code on the request's path reads it with `current_request()`: routers (sticky keys),
`record_outcome`, log records (`log_fields`) and traces. Handle calls carry it across
processes: in-process it flows with the task's context; process replicas ship it in their
messages; Ray in the call's arguments. When tracing is on, a call leaving a process takes the
calling span's W3C trace context along (`outgoing_request`), and the receiving side continues
it (`set_request`). This module is the one request context servekit has; telemetry reuses it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from servekit._replica.context import current_replica
from servekit._telemetry import tracing
from servekit._telemetry.logs import LogFields

REQUEST_ID_HEADER = "x-request-id"
"""The header every HTTP response carries: the client's id when valid, else a generated one."""

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True)
class RequestContext:
    """One request's identity and routing metadata."""

    request_id: str
    """The request's id (the `x-request-id` header it came with, or a generated one)."""
    keys: Mapping[str, str] = field(default_factory=dict)
    """Routing values by source, like ``{"header:x-user-id": "u42", "cookie:uid": "7"}``."""
    outcomes: list[tuple[str, float]] = field(default_factory=list, compare=False)
    """Outcomes user code recorded during the request (`record_outcome`), posted by the edge."""
    trace: Mapping[str, str] | None = None
    """The W3C trace context (`traceparent`, `tracestate`) of the span that sent this call to
    another process, when tracing is on; within a process the current span is OpenTelemetry's."""

    def key(self, source: str) -> str | None:
        """The value of `source` (``"header:x"``, ``"cookie:x"``, ``"query:x"``), None if absent."""
        return self.keys.get(source)

    def __reduce__(self) -> tuple[object, ...]:
        trace = dict(self.trace) if self.trace is not None else None
        return (RequestContext, (self.request_id, dict(self.keys), [], trace))


_current: ContextVar[RequestContext | None] = ContextVar("servekit_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the request being served, or None outside one."""
    return _current.get()


class _Continued(NamedTuple):
    request: object
    trace: object
    tracing: tracing.Tracing


def set_request(context: RequestContext | None) -> object:
    """Make `context` current, continuing its trace when it carries one; returns a token for
    `reset_request`."""
    token = _current.set(context)
    if context is not None and context.trace:
        active = tracing.active()
        if active is not None:
            return _Continued(token, active.attach(context.trace), active)
    return token


def reset_request(token: object) -> None:
    """Restore the context that was current before `set_request`."""
    if isinstance(token, _Continued):
        token.tracing.detach(token.trace)
        token = token.request
    _current.reset(token)  # type: ignore[arg-type]


@contextmanager
def request_scope(context: RequestContext | None) -> Iterator[None]:
    """Run the block with `context` current (None leaves the current one as it is)."""
    if context is None:
        yield
        return
    token = set_request(context)
    try:
        yield
    finally:
        reset_request(token)


def outgoing_request() -> RequestContext | None:
    """The current request as a call to another process carries it: with the current span's
    trace context when tracing is on."""
    context = _current.get()
    active = tracing.active()
    if context is None or active is None:
        return context
    return replace(context, trace=active.carrier() or None)


def log_fields() -> LogFields:
    """The request id, trace id, deployment and replica of the code running now, for log records."""
    context = _current.get()
    replica = current_replica()
    active = tracing.active()
    return LogFields(
        context.request_id if context is not None else None,
        active.trace_id() if active is not None else None,
        replica.deployment if replica is not None else None,
        replica.replica_id if replica is not None else None,
    )


def request_id_from(value: str | None) -> str:
    """`value` when it is a valid request id (1-128 of letters, digits, ``._:-``), else a new one."""
    if value is not None and _VALID_ID.match(value):
        return value
    return uuid.uuid4().hex


def record_outcome(name: str, value: float) -> None:
    """Record a user outcome (a click, a rating, revenue) for the request being served.

    The outcome is credited to the arm of every router the request went through, for the A/B
    report in status. Outside a request it raises `RuntimeError`; clients can also post outcomes
    later with `POST /-/routers/{router}/outcomes` and the response's `x-request-id`.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError(
            "servekit.record_outcome() was called outside a request; call it while serving one, "
            "or POST the outcome to /-/routers/{router}/outcomes with the request id"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"an outcome needs a non-empty name, like 'clicked'; got {name!r}")
    if not isinstance(value, int | float):
        raise ValueError(f"outcome {name!r} must be a number (True/False count as 1/0); got {value!r}")
    context.outcomes.append((name, float(value)))
