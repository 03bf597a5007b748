"""The backend registry: the one place that turns `RunOptions.backend` into a runtime.

Each backend is a module exposing `BACKEND` (a `Backend`), imported only when an app uses it,
so the local path never loads Ray and a missing extra is reported only when asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, cast

from servekit._runtime.interface import HttpIngress, Runtime
from servekit._runtime.model_watch import pin_models
from servekit._runtime.options import BACKEND_NAMES, RunOptions
from servekit._spec.graph import AppGraph

_MODULES = {
    "local": "servekit._runtime.local.backend",
    "ray": "servekit._runtime.ray.backend",
}
assert tuple(_MODULES) == BACKEND_NAMES


class Backend(Protocol):
    """Makes runtimes for app graphs on one kind of infrastructure."""

    serves_http: bool
    """Whether the backend serves the HTTP ingress itself (Ray Serve's proxy) rather than the
    edge running uvicorn on the runtime's loop in this process."""

    def make(self, graph: AppGraph, options: RunOptions, http: HttpIngress | None = None) -> Runtime:
        """A runtime for `graph` (not started). With `http`, the app is served over HTTP."""
        ...


class ClusterBackend(Backend, Protocol):
    """A backend whose apps live on a cluster that outlives them, so it can report them later."""

    def cluster_status(self, address: str, app: str | None = None) -> list[dict[str, Any]]:
        """The status document of each app (or only `app`) on the cluster at `address`."""
        ...

    def cluster_router_operation(
        self, address: str, app: str | None, operation: str, name: str | None, *args: Any
    ) -> dict[str, Any]:
        """Run router `operation` ("status", "set_weights", "switch", "switch_back", "start_canary",
        "canary_action") of router `name` (all routers for "status" with None) of `app` on the
        cluster; returns the routers' state."""
        ...

    def serve_options(self, graph: AppGraph) -> dict[str, dict[str, Any]]:
        """Each deployment's options in the cluster's own config names."""
        ...

    def application(self, graph: AppGraph, http: HttpIngress, app_name: str) -> Any:
        """The cluster's own application object serving `graph` over HTTP."""
        ...

    def deploy_config(
        self, address: str, folder: Path, app: dict[str, Any], http: dict[str, Any], timeout_s: float
    ) -> bool:
        """Deploy a config application with `folder` as its code; False when it already runs."""
        ...


CLUSTER_BACKEND = "ray"
"""The backend `servekit status --address` reads."""


def cluster_backend() -> ClusterBackend:
    """The backend that runs apps on clusters (Ray)."""
    return cast(ClusterBackend, get_backend(CLUSTER_BACKEND))


def get_backend(name: str) -> Backend:
    """The backend called `name` (one of `BACKEND_NAMES`; `RunOptions` has checked it)."""
    backend: Backend = importlib.import_module(_MODULES[name]).BACKEND
    return backend


def make_runtime(graph: AppGraph, options: RunOptions, http: HttpIngress | None = None) -> Runtime:
    """The runtime that runs `graph` as `options` say, its bound model tags pinned to their versions now."""
    return get_backend(options.backend).make(pin_models(graph), options, http)
