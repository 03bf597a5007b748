"""The runtime interface: what every backend implements, and what the HTTP edge serves from.

```
Dispatcher          handles call through it: the loop, unary and streaming calls
├── Runtime         one running app: start, handle, scale, update, status, shutdown
│                   (`LocalRuntime`; `RayRuntime`, which drives Ray Serve from the caller)
│   └── ProxiedRuntime   a backend that serves HTTP itself (`RayRuntime`, Ray Serve's proxy)
└── ServingRuntime  what the Starlette ingress needs: calls, admission for an ASGI ingress,
                    readiness and status (`LocalRuntime`; on Ray, the ingress replica's view)
```

`servekit.run`, `servekit.serve` and the CLI use only these, so a backend is one class
behind the registry in `servekit._runtime.backends`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from servekit._runtime.handle import DeploymentHandle, Dispatcher
from servekit._runtime.routing import RouterOperations
from servekit._spec.graph import AppGraph


class Runtime(Dispatcher, Protocol):
    """One running app on some backend."""

    @property
    def graph(self) -> AppGraph:
        """The app graph this runtime serves."""
        ...

    @property
    def state(self) -> str:
        """``"new"``, ``"starting"``, ``"running"``, ``"stopping"`` or ``"stopped"``."""
        ...

    @property
    def location(self) -> str:
        """Where the app runs, in words, like "on this machine" or "on Ray Serve as app 'Api'"."""
        ...

    async def start(self) -> None:
        """Start every deployment; raises `DeploymentStartError` before serving when one cannot."""
        ...

    def handle(self, deployment: str | None = None) -> DeploymentHandle:
        """A handle to `deployment` (the ingress by default)."""
        ...

    async def scale(self, deployment: str, replicas: int) -> None:
        """Run `replicas` replicas of `deployment`."""
        ...

    async def update(self, graph: AppGraph) -> None:
        """Redeploy `graph` over the running app without dropping requests."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-ready state of the app and each deployment's replicas (as at `/-/status`)."""
        ...

    @property
    def routers(self) -> RouterOperations:
        """The app's traffic-split routers: weights, switches, outcomes, their state."""
        ...

    async def refresh_stats(self) -> None:
        """Bring what `status()` reports up to date."""
        ...

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let running ones finish (up to `grace_s`), stop everything."""
        ...


class ServingRuntime(Dispatcher, Protocol):
    """What the HTTP ingress calls: the ingress deployment, its admission, health and status."""

    @property
    def graph(self) -> AppGraph:
        """The app graph (the ingress node's endpoints become routes)."""
        ...

    @property
    def state(self) -> str:
        """The app's state, as `/readyz` reports it."""
        ...

    async def is_ready(self) -> bool:
        """Whether every deployment has its replicas up (`/readyz`)."""
        ...

    def replica(self, deployment: str) -> AbstractAsyncContextManager[Any]:
        """Hold a replica of `deployment`, under its admission control, for an ASGI ingress app."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-ready state for `/-/status`."""
        ...

    @property
    def routers(self) -> RouterOperations | None:
        """The app's traffic-split routers, for `/-/routers` (None where none can be operated)."""
        ...

    async def refresh_stats(self) -> None:
        """Bring what `status()` reports up to date."""
        ...

    def metric_families(self) -> list[Any]:
        """Metric families (prometheus_client's) beyond what `status()` shows: calls per method
        and user metrics, of every process this runtime can see (after `refresh_stats`)."""
        ...


class ProxiedRuntime(Runtime, Protocol):
    """A runtime whose backend serves the HTTP ingress itself (given an `HttpIngress`)."""

    def http_address(self) -> tuple[str, int]:
        """The (host, port) the backend's HTTP proxy listens on."""
        ...


@dataclass(frozen=True)
class HttpIngress:
    """How the HTTP edge will serve the app's ingress, told to the backend that makes the runtime.

    A backend that serves HTTP itself (Ray Serve's proxy) listens at `host`:`port` and calls
    `build_app` where the ingress replica runs, with that replica's `ServingRuntime` (so runtimes
    never import the edge). The local backend reads only `ingress_in_process`.
    """

    host: str
    port: int
    build_app: Callable[[ServingRuntime], Any]
    access_log: bool = False
    ingress_in_process: bool = False
    """Whether the ingress's instance must live where HTTP is served (a raw `__call__(request)` or
    an `@ingress` ASGI app), so its replicas cannot move to worker processes."""
    ssl_certfile: str | None = None
    """With `ssl_keyfile`: the proxy serves HTTPS with this certificate chain (PEM)."""
    ssl_keyfile: str | None = None
