"""`make_runtime`: the one place that picks a backend for an app graph."""

from __future__ import annotations

from collections.abc import Collection

from servekit._runtime.interface import BACKENDS, Backend, HttpIngress, ProxiedRuntime, Runtime
from servekit._runtime.local.runtime import LocalRuntime
from servekit._spec.config import Isolation
from servekit._spec.graph import AppGraph
from servekit.errors import DeploymentOptionError


def make_runtime(
    graph: AppGraph,
    *,
    backend: Backend = "local",
    address: str | None = None,
    isolation: Isolation | None = None,
    gpus: str | None = None,
    in_process_only: Collection[str] = (),
    start_timeout_s: float | None = None,
) -> Runtime:
    """The runtime that runs `graph` on `backend`.

    "local" runs it on this machine (in-process or worker-process replicas). "ray" runs it on
    Ray Serve: on the cluster at `address` (or ``RAY_ADDRESS``), else on a local Ray that
    servekit starts and stops.
    """
    if backend == "local":
        return make_local_runtime(
            graph,
            address=address,
            isolation=isolation,
            gpus=gpus,
            in_process_only=in_process_only,
            start_timeout_s=start_timeout_s,
        )
    if backend == "ray":
        return make_http_runtime(
            graph,
            backend=backend,
            address=address,
            isolation=isolation,
            gpus=gpus,
            start_timeout_s=start_timeout_s,
        )
    raise DeploymentOptionError(
        f"backend={backend!r} is unknown; use one of {', '.join(map(repr, BACKENDS))}"
    )


def make_local_runtime(
    graph: AppGraph,
    *,
    address: str | None = None,
    isolation: Isolation | None = None,
    gpus: str | None = None,
    in_process_only: Collection[str] = (),
    start_timeout_s: float | None = None,
) -> LocalRuntime:
    """The local runtime for `graph`; an `address` (a cluster's) is refused, saying what it is for."""
    if address is not None:
        raise DeploymentOptionError(
            f"address={address!r} is for the Ray backend; pass backend='ray' (--backend ray) with it"
        )
    return LocalRuntime(
        graph,
        isolation=isolation,
        gpus=gpus,
        in_process_only=in_process_only,
        start_timeout_s=start_timeout_s,
    )


def make_http_runtime(
    graph: AppGraph,
    *,
    backend: Backend,
    address: str | None = None,
    isolation: Isolation | None = None,
    gpus: str | None = None,
    http: HttpIngress | None = None,
    start_timeout_s: float | None = None,
) -> ProxiedRuntime:
    """A runtime for a backend that serves the HTTP ingress itself ("ray": Ray Serve's proxy).

    With `http` the backend serves the ingress at its address; without, only handles reach it.
    `start_timeout_s` bounds how long the start waits for the backend to run every replica.
    """
    if backend != "ray":
        raise DeploymentOptionError(f"backend {backend!r} does not serve HTTP itself; only 'ray' does")
    from servekit._runtime.ray import load_ray_runtime  # noqa: PLC0415

    ray_runtime = load_ray_runtime()
    runtime: ProxiedRuntime = ray_runtime(
        graph, address=address, isolation=isolation, gpus=gpus, http=http, start_timeout_s=start_timeout_s
    )
    return runtime
