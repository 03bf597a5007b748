"""The request context: what travels with each call through every hop and backend.

In: the HTTP edge makes a `RequestContext` per request (the request id, plus the headers,
cookies and query parameters that some router of the app keys on) and sets it as current.
Out: any code on the request's path reads it with `current_request()`: routers (sticky keys),
`record_outcome`, and later telemetry. Handle calls carry it across processes: in-process it
flows with the task's context; process replicas ship it in their messages; Ray in the call's
arguments. This module is the one request context servekit has; telemetry reuses it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

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

    def key(self, source: str) -> str | None:
        """The value of `source` (``"header:x"``, ``"cookie:x"``, ``"query:x"``), None if absent."""
        return self.keys.get(source)

    def __reduce__(self) -> tuple[object, ...]:
        return (RequestContext, (self.request_id, dict(self.keys)))


_current: ContextVar[RequestContext | None] = ContextVar("servekit_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the request being served, or None outside one."""
    return _current.get()


def set_request(context: RequestContext | None) -> object:
    """Make `context` current; returns a token for `reset_request`."""
    return _current.set(context)


def reset_request(token: object) -> None:
    """Restore the context that was current before `set_request`."""
    _current.reset(token)  # type: ignore[arg-type]


@contextmanager
def request_scope(context: RequestContext | None) -> Iterator[None]:
    """Run the block with `context` current (None leaves the current one as it is)."""
    if context is None:
        yield
        return
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


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
