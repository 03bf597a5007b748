"""What a server exposes about itself (`/metrics`, `/-/dashboard`), and the state behind it.

In: `TelemetryOptions` (from `serve(metrics=..., metrics_port=..., dashboard=...)` and the CLI).
Out: `EdgeTelemetry`, one per server and kept across redeploys (counters never reset), which
gives the ingress app its metrics layer and routes and runs the dashboard's sampler. A feature
that is off installs nothing: no layer, no route, no task.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from servekit._http.dashboard import DashboardHistory, dashboard_routes
from servekit._http.metrics import HttpMetrics, HttpMetricsMiddleware, metrics_route
from servekit._runtime.interface import ServingRuntime
from servekit.errors import DeploymentOptionError


@dataclass(frozen=True)
class TelemetryOptions:
    """Which of `/metrics` and `/-/dashboard` a server serves, and where."""

    metrics: bool = True
    """Count requests and serve `/metrics` (off: no metrics layer at all)."""
    metrics_port: int | None = None
    """Serve `/metrics` on this port (same host) instead of the app's port (local backend)."""
    dashboard: bool | None = None
    """Serve `/-/dashboard`; None: when the metrics are on."""

    def __post_init__(self) -> None:
        if self.dashboard and not self.metrics:
            raise DeploymentOptionError(
                "dashboard=True needs metrics=True: the dashboard charts the request metrics "
                "(drop one of the two options)"
            )
        if self.metrics_port is not None:
            if not self.metrics:
                raise DeploymentOptionError("metrics_port is set but metrics=False: drop one of the two")
            port = self.metrics_port
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise DeploymentOptionError(f"metrics_port={port!r} must be a port number, 0 to 65535")

    @property
    def dashboard_on(self) -> bool:
        """Whether `/-/dashboard` is served."""
        return self.metrics if self.dashboard is None else self.dashboard


class EdgeTelemetry:
    """One server's request metrics and dashboard history, per `options`."""

    def __init__(self, options: TelemetryOptions | None = None) -> None:
        self.options = options or TelemetryOptions()
        self.http = HttpMetrics() if self.options.metrics else None
        self.history = DashboardHistory(self.http) if self.options.dashboard_on else None

    def middleware(self, routes: list[BaseRoute]) -> list[Middleware]:
        """The metrics layer over `routes` (none when the metrics are off)."""
        if self.http is None:
            return []
        return [Middleware(HttpMetricsMiddleware, metrics=self.http, routes=routes)]

    def routes(self, runtime: ServingRuntime) -> list[BaseRoute]:
        """`/metrics` (unless it has its own port) and the dashboard's routes, as they are on."""
        found: list[BaseRoute] = []
        if self.http is not None and self.options.metrics_port is None:
            found.append(metrics_route(runtime, self.http))
        if self.history is not None:
            found += dashboard_routes(runtime, self.history)
        return found

    def start(self, runtime: ServingRuntime) -> None:
        """Start sampling `runtime` for the dashboard (on the running loop), when it is on."""
        if self.history is not None:
            self.history.start(runtime)

    async def stop(self) -> None:
        """Stop the dashboard's sampler."""
        if self.history is not None:
            await self.history.stop()
