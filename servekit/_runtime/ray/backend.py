"""The Ray backend's entry in the registry: Ray is imported only when an app is made here."""

from __future__ import annotations

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

    def score_dataset(self, graph: AppGraph, job: BatchJob, address: str | None) -> BatchReport:
        """Score a file on Ray Data (`servekit batch --backend ray`)."""
        load_ray_runtime()  # says what to install when Ray is missing
        from servekit._runtime.ray.batch import score_dataset  # noqa: PLC0415

        return score_dataset(graph, job, address)


BACKEND = RayBackend()
