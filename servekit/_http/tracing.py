"""The edge's server span: one span per HTTP request, continuing the client's W3C `traceparent`.

In: an HTTP request (its `traceparent` header; a malformed one is ignored and the request starts
a trace of its own). Out: a SERVER span named after the method and the matched route
(``POST /classify``), current while the app serves the request, so the replica spans of the
request's calls are its children; it records the status (5xx marks it failed) and the request
id. A request the sampler leaves out only carries its "not sampled" context on (one check per
hop below). Installed only while the process traces (`build_asgi_app` checks `tracing.active()`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._replica.request_context import current_request
from servekit._telemetry.tracing import Span, Tracing, parse_traceparent


class TracingMiddleware:
    """Serves each HTTP request inside a server span."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = parse_traceparent(value.decode("latin-1"))
                break
        method = scope["method"]
        with self.tracing.span(method, "server", None, parent) as span:
            if span is None:  # not sampled: its context is current, nothing is recorded
                await self.app(scope, receive, send)
                return
            span.attributes = _attributes(scope)
            status = 0

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                _describe(span, scope, method, status)


def _describe(span: Span, scope: Scope, method: str, status: int) -> None:
    """Name the span after the matched route and record the status (5xx: failed)."""
    route = getattr(scope.get("route"), "path", None)  # set by the router once matched
    if route is not None:
        span.name = f"{method} {route}"
        span.set_attribute("http.route", route)
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.fail(f"HTTP {status}")


def _attributes(scope: Scope) -> dict[str, str | int | float | bool]:
    attributes: dict[str, str | int | float | bool] = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    request = current_request()
    if request is not None:
        attributes["servekit.request_id"] = request.request_id
    return attributes
