"""A bundle's app as a Ray Serve application: what Ray Serve's application builder returns when
Ray's own `serve deploy` (or `servekit deploy`) runs a bundle's `ray/serve_config.yaml`."""

from __future__ import annotations

from typing import Any

from servekit._runtime.interface import HttpIngress
from servekit._runtime.options import RunOptions
from servekit._runtime.ray.runtime import RayRuntime
from servekit._runtime.ray.ship import user_modules
from servekit._spec.graph import AppGraph


def application(graph: AppGraph, http: HttpIngress, app_name: str) -> Any:
    """The bound ingress deployment of `graph` (the same deployments `RayRuntime` runs)."""
    runtime = RayRuntime(graph, RunOptions(backend="ray"), http=http, app_name=app_name)
    return runtime._build(graph, user_modules(graph.nodes.values()))
