"""`/metrics`: the HTTP edge's request metrics, and the app's metrics in Prometheus' text format.

In: every HTTP request (`HttpMetricsMiddleware`, a pure ASGI layer: its route template, method,
status and duration go into `HttpMetrics`, on the event loop, with no lock) and, at scrape time,
the runtime's `status()` and `metric_families()`. Out: the families of `FAMILIES` plus user
metrics, rendered by prometheus_client (`metrics_route`), on the app's port or its own
(`metrics_app`). Routes are labelled by template (`/items/{id}`), never by raw path, so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._runtime.interface import ServingRuntime
from servekit._telemetry.metrics import LATENCY_BUCKETS_S, Buckets, merge_families, new_family, render
from servekit._telemetry.status import status_families

UNMATCHED = "<unmatched>"
"""The route label of requests no route matched (404s, and requests refused before routing)."""
INGRESS_APP = "<ingress app>"
"""The route label of requests served by an `@ingress` ASGI app (its own routes are its business)."""
INGRESS_APP_KEY = "servekit.ingress_app"
"""Set in the scope of a request an `@ingress` ASGI app serves."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
RECENT_ERRORS = 50


@dataclass
class RouteStats:
    """Requests of one route template and method: per-status counts and the latency histogram."""

    statuses: dict[int, int] = field(default_factory=dict)
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BUCKETS_S))


class HttpMetrics:
    """What the edge counted: requests per route, method and status, their latency, and the
    latest server errors. One per server, kept across redeploys."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteStats] = {}
        self.in_progress = 0
        self.requests = 0
        """Requests answered, every route together (for the dashboard's rate)."""
        self.server_errors = 0
        """Responses with a 5xx status, every route together."""
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)

    def record(self, route: str, method: str, status: int, seconds: float, scope: Scope) -> None:
        """Count one answered request (on the request path: kept to a few additions)."""
        key = (route, method)
        stats = self.routes.get(key)
        if stats is None:
            stats = self.routes[key] = RouteStats()
        statuses = stats.statuses
        statuses[status] = statuses.get(status, 0) + 1
        latency = stats.latency
        latency.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        latency.sum += seconds
        self.requests += 1
        if status >= 500:
            self.server_errors += 1
            self.recent_errors.append(_error_event(route, method, status, seconds, scope))

    def latency_counts(self) -> list[int]:
        """Every request's latency together, per bucket of `LATENCY_BUCKETS_S` (and +Inf)."""
        total = [0] * (len(LATENCY_BUCKETS_S) + 1)
        for stats in self.routes.values():
            for index, count in enumerate(stats.latency.counts):
                total[index] += count
        return total

    def families(self) -> list[Metric]:
        """The `servekit_http_*` families."""
        requests = new_family("servekit_http_requests_total")
        durations = new_family("servekit_http_request_duration_seconds")
        for (route, method), stats in sorted(self.routes.items()):
            for status, count in sorted(stats.statuses.items()):
                requests.add_metric([route, method, str(status)], count)  # type: ignore[attr-defined]
            durations.add_metric([route, method], stats.latency.cumulative(), stats.latency.sum)  # type: ignore[attr-defined]
        in_progress = new_family("servekit_http_requests_in_progress")
        in_progress.add_metric([], self.in_progress)  # type: ignore[attr-defined]
        return [requests, durations, in_progress]


def _error_event(route: str, method: str, status: int, seconds: float, scope: Scope) -> dict[str, Any]:
    request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
    return {
        "at": time.time(),
        "route": route,
        "method": method,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "request_id": request_id,
    }


class HttpMetricsMiddleware:
    """Counts each HTTP request in `HttpMetrics` by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started = time.perf_counter()
        status = 500  # unless the app answers: an exception that escapes is a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_progress += 1
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.in_progress -= 1
            route = scope.get("route")
            method = scope["method"]
            metrics.record(
                route.path if route is not None and hasattr(route, "path") else self._unrouted(scope),
                method if method in KNOWN_METHODS else "OTHER",
                status,
                time.perf_counter() - started,
                scope,
            )

    def _unrouted(self, scope: Scope) -> str:
        """The route label of a request the router did not route."""
        if INGRESS_APP_KEY in scope:
            return INGRESS_APP
        # refused before routing (a guard, the body limit), or an older Starlette: match here
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                return str(getattr(candidate, "path", UNMATCHED))
        return UNMATCHED


async def scrape(runtime: ServingRuntime, http: HttpMetrics | None, accept: str) -> Response:
    """The app's metrics now: the edge's, the runtime's state, its calls and user metrics."""
    await runtime.refresh_stats()
    families = merge_families(
        http.families() if http is not None else [],
        status_families(runtime.status()),
        runtime.metric_families(),
    )
    body, content_type = render(families, accept)
    return Response(body, media_type=content_type)


def metrics_route(runtime: ServingRuntime, http: HttpMetrics | None) -> Route:
    """`GET /metrics` for `runtime`, with `http`'s request metrics."""

    async def metrics(request: Request) -> Response:
        return await scrape(runtime, http, request.headers.get("accept", ""))

    return Route("/metrics", metrics, methods=["GET"])


class MetricsApp:
    """The app served on the metrics port: `/metrics` only, for the runtime the server serves now."""

    def __init__(self, runtime: ServingRuntime, http: HttpMetrics | None) -> None:
        self.runtime = runtime
        self.http = http
        self._app = Starlette(routes=[Route("/metrics", self._metrics, methods=["GET"])])

    async def _metrics(self, request: Request) -> Response:
        return await scrape(self.runtime, self.http, request.headers.get("accept", ""))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
