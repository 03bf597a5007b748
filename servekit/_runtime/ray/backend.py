"""The Ray backend's entry in the registry: Ray is imported only when an app is made here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from servekit._runtime.interface import HttpIngress, ProxiedRuntime
from servekit._runtime.options import RunOptions
from servekit._runtime.ray import load_ray_runtime
from servekit._spec.graph import AppGraph

if TYPE_CHECKING:
    from servekit._runtime.batch.runner import BatchJob, BatchReport


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
        """Run a router `operation` ("status", "set_weights", "switch", "switch_back", "start_canary",
        "canary_action") on the cluster at `address`, for app `app` (default: the only Serve app with
        routers)."""
        load_ray_runtime()
        from servekit._runtime.ray.routers import cluster_routers  # noqa: PLC0415

        return cluster_routers(address, app, operation, name, *args)

    def serve_options(self, graph: AppGraph) -> dict[str, dict[str, Any]]:
        """Each deployment's options in Ray Serve's config names (no Ray needed): for bundles."""
        from servekit._runtime.ray.options import deployment_options  # noqa: PLC0415

        return {
            name: deployment_options(node, ingress=name == graph.ingress)
            for name, node in graph.nodes.items()
        }

    def application(self, graph: AppGraph, http: HttpIngress, app_name: str) -> Any:
        """The Ray Serve application (the bound ingress) that serves `graph` at `http`: what a
        Ray Serve application builder returns. Raises `ImportError` when Ray is missing."""
        load_ray_runtime()
        from servekit._runtime.ray.bundle import application  # noqa: PLC0415

        return application(graph, http, app_name)

    def deploy_config(
        self, address: str, folder: Path, app: dict[str, Any], http: dict[str, Any], timeout_s: float
    ) -> bool:
        """Deploy the Serve config application `app` with `folder` as its working_dir; False when
        the same bundle already runs there."""
        load_ray_runtime()
        from servekit._runtime.ray.deploy import deploy_bundle  # noqa: PLC0415

        return deploy_bundle(address, folder, app, http, timeout_s)

    def score_dataset(self, graph: AppGraph, job: BatchJob, address: str | None) -> BatchReport:
        """Score a file on Ray Data (`servekit batch --backend ray`)."""
        load_ray_runtime()  # says what to install when Ray is missing
        from servekit._runtime.ray.batch import score_dataset  # noqa: PLC0415

        return score_dataset(graph, job, address)


BACKEND = RayBackend()
