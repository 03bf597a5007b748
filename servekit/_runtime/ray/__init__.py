"""The Ray backend: the same app graph as Ray Serve deployments. Only this package imports Ray.

- `options`: servekit options -> Ray Serve options (pure; the mapping table is its docstring)
- `autoscaling`: servekit's policies as a Ray custom autoscaling policy (pure)
- `ship`: what travels to replicas, with the user's code by value
- `replica`: the classes Ray Serve runs, around servekit's `Replica`; the ingress's `ServingRuntime`
- `dispatcher`: servekit handles over Ray's `DeploymentHandle`, Ray's errors as servekit's
- `status`: Ray Serve's details as servekit's `/-/status`
- `capacity`: whether a start waits for nodes the cluster's autoscaler can add (pure)
- `cluster`: joining or starting Ray, Serve's HTTP proxy, what the autoscaler reports
- `runtime`: `RayRuntime`, the `Runtime` that drives all of it from the caller's process
"""

from __future__ import annotations

from typing import Any


def load_ray_runtime() -> Any:
    """The `RayRuntime` class; raises `ImportError` saying what to install when Ray is missing."""
    try:
        import ray.serve  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ImportError(
            "the Ray backend needs Ray Serve: pip install 'servekit[ray]' (or 'ray[serve]')"
        ) from exc
    from servekit._runtime.ray.runtime import RayRuntime  # noqa: PLC0415

    return RayRuntime
