"""An app's state on a Ray cluster, in the shape of the local runtime's `/-/status`.

`app_status` turns Ray Serve's instance details (what `serve status` and the dashboard show)
into servekit's status document; `fetch_app_status` asks the Serve controller for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import ray
from ray.serve.context import _get_global_client
from ray.serve.exceptions import RayServeException

from servekit._runtime.ray.routers import router_status

_STATES = {
    "RUNNING": "running",
    "DEPLOYING": "starting",
    "NOT_STARTED": "starting",
    "DEPLOY_FAILED": "failed",
    "UNHEALTHY": "unhealthy",
    "DELETING": "stopping",
}


def serve_details() -> dict[str, Any]:
    """Ray Serve's instance details: proxies, HTTP options and every application (blocking call)."""
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Ray Serve is not running on this cluster")
    details: dict[str, Any] = client.get_serve_details()
    return details


def cluster_status(address: str, app: str | None = None) -> list[dict[str, Any]]:
    """Join the cluster at `address` (unless this process already has), read each Serve app's
    status (or only `app`'s), and leave again."""
    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        details = serve_details() if serve_running() else {"applications": {}}
        names = [app] if app is not None else sorted(details.get("applications", {}))
        documents = [
            app_status(details, name, {}) for name in names if name in details.get("applications", {})
        ]
        for document in documents:
            routers = router_status(document["app"])
            if routers:
                document["routers"] = routers
    finally:
        if joined:
            ray.shutdown()
    return documents


def serve_running() -> bool:
    """Whether Ray Serve's controller runs on the cluster this process joined."""
    try:
        return _get_global_client() is not None
    except RayServeException:
        return False


def fetch_app_status(
    app_name: str, versions: Mapping[str, str | None] | None = None, ingress: str | None = None
) -> dict[str, Any]:
    """The status document of Serve application `app_name` (blocking: call it off the event loop)."""
    return app_status(serve_details(), app_name, versions or {}, ingress)


def app_status(
    details: Mapping[str, Any],
    app_name: str,
    versions: Mapping[str, str | None],
    ingress: str | None = None,
) -> dict[str, Any]:
    """Ray Serve's `details` for `app_name` as servekit's status: state, readiness, deployments."""
    app = details.get("applications", {}).get(app_name)
    if app is None:
        return {"state": "stopped", "ready": False, "backend": "ray", "app": app_name, "deployments": {}}
    deployments = {
        name: _deployment_status(app_name, name, deployment, versions.get(name))
        for name, deployment in app.get("deployments", {}).items()
    }
    status = status_text(app.get("status"))
    return {
        "state": _STATES.get(status, status.lower()),
        "ready": status == "RUNNING",
        "backend": "ray",
        "app": app_name,
        "message": app.get("message") or None,
        "ingress": ingress,
        "bundle": ((app.get("deployed_app_config") or {}).get("args") or {}).get("bundle"),
        "deployments": deployments,
    }


def _deployment_status(
    app_name: str, name: str, deployment: Mapping[str, Any], version: str | None
) -> dict[str, Any]:
    config = deployment.get("deployment_config", {})
    replicas = [
        {
            "id": f"{name}#{replica.get('replica_id')}",
            "state": status_text(replica.get("state")).lower(),
            "pid": replica.get("pid"),
            "node_ip": replica.get("node_ip"),
            "node_id": replica.get("node_id"),
            "actor_name": replica.get("actor_name"),
        }
        for replica in deployment.get("replicas", [])
    ]
    running = sum(1 for replica in replicas if replica["state"] == "running")
    return {
        "version": version,
        "status": status_text(deployment.get("status")).lower(),
        "message": deployment.get("message") or None,
        "target_replicas": deployment.get("target_num_replicas"),
        "running_replicas": running,
        "starting_replicas": sum(1 for r in replicas if r["state"] in {"starting", "pending_migration"}),
        "max_ongoing_requests": config.get("max_ongoing_requests"),
        "autoscaling": config.get("autoscaling_config"),
        "resources": deployment.get("required_resources"),
        "replicas": replicas,
    }


def status_text(value: object) -> str:
    """A Ray status (a str enum, or already its value) as its plain value, like "RUNNING"."""
    return str(getattr(value, "value", value) or "")
