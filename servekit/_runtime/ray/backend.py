"""The Ray backend's entry in the registry: Ray is imported only when an app is made here."""

from __future__ import annotations

from typing import Any

from servekit._runtime.interface import HttpIngress, ProxiedRuntime
from servekit._runtime.options import RunOptions
from servekit._runtime.ray import load_ray_runtime
from servekit._spec.graph import AppGraph


class RayBackend:
    """Runs apps on Ray Serve; Ray Serve's proxy serves the HTTP ingress."""

    serves_http = True

    def make(self, graph: AppGraph, options: RunOptions, http: HttpIngress | None = None) -> ProxiedRuntime:
        """A `RayRuntime` for `graph`; raises `ImportError` naming the extra when Ray is missing."""
        runtime: ProxiedRuntime = load_ray_runtime()(graph, options, http=http)
        return runtime

    def cluster_status(self, address: str, app: str | None = None) -> list[dict[str, Any]]:
        """The status of each Serve application (or only `app`) on the cluster at `address`."""
        load_ray_runtime()  # says what to install when Ray is missing
        from servekit._runtime.ray.status import cluster_status  # noqa: PLC0415

        return cluster_status(address, app)

    def cluster_router_operation(
        self, address: str, app: str | None, operation: str, name: str | None, *args: Any
    ) -> dict[str, Any]:
        """Run a router `operation` ("status", "set_weights", "switch", "switch_back") on the cluster
        at `address`, for app `app` (default: the only Serve app with routers)."""
        load_ray_runtime()
        from servekit._runtime.ray.routers import cluster_routers  # noqa: PLC0415

        return cluster_routers(address, app, operation, name, *args)


BACKEND = RayBackend()
