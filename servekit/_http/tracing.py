"""The edge's server span: one span per HTTP request, continuing the client's W3C `traceparent`.

In: an HTTP request (its `traceparent`/`tracestate`/`baggage` headers, read by OpenTelemetry's
configured propagators). Out: a SERVER span named after the method and the matched route
(``POST /classify``), current while the app serves the request, so the replica spans of the
request's calls are its children; it records the status (5xx marks it failed) and the request
id. Installed only while the process traces (`build_asgi_app` checks `tracing.active()`).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._replica.request_context import current_request
from servekit._telemetry.tracing import Tracing

_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})


class TracingMiddleware:
    """Serves each HTTP request inside a server span."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATED
        }
        parent = self.tracing.extract(carrier) if carrier else None
        method = scope["method"]
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracing.span(method, "server", _attributes(scope), parent) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                if span is not None:  # None: not made, under an unsampled span
                    self._describe(span, scope, method, status)

    def _describe(self, span: Any, scope: Scope, method: str, status: int) -> None:
        """Name the span after the matched route and record the status (5xx: failed)."""
        route = getattr(scope.get("route"), "path", None)  # set by the router once matched
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.tracing.fail(span, f"HTTP {status}")


def _attributes(scope: Scope) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
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
