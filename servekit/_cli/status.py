"""`servekit status`: an app's deployments and replicas, from a local server or a Ray cluster."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from servekit._cli.credentials import client_headers


class StatusError(Exception):
    """The status cannot be read; the message is one line saying why."""


def status_from_url(url: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The `/-/status` document of the app served at `url`, as a one-item list."""
    endpoint = url.rstrip("/") + "/-/status"
    if not endpoint.startswith(("http://", "https://")):
        raise StatusError(
            f"--url must start with http:// or https://, like http://127.0.0.1:8000; got {url!r}"
        )
    try:
        request = urllib.request.Request(endpoint, headers=client_headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusError(
            f"{endpoint} answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"cannot reach {endpoint}: {getattr(exc, 'reason', exc)}") from None
    return [document]


def status_from_cluster(address: str, app: str | None) -> list[dict[str, Any]]:
    """The status of each Serve application (or just `app`) on the Ray cluster at `address`."""
    from servekit._runtime.backends import cluster_backend  # noqa: PLC0415

    try:
        documents = cluster_backend().cluster_status(address, app)
    except ImportError as exc:
        raise StatusError(f"reading a Ray cluster: {exc}") from None
    if app is not None and not documents:
        raise StatusError(f"no Serve application named {app!r} on the cluster at {address}")
    return documents


def render(documents: Iterable[dict[str, Any]], as_json: bool) -> str:
    """The documents as JSON, or as a table per app: deployments, then their replicas."""
    documents = list(documents)
    if as_json:
        return json.dumps(documents, indent=2, default=str)
    if not documents:
        return "no servekit or Serve applications"
    return "\n\n".join(_render_app(document) for document in documents)


def _render_app(document: dict[str, Any]) -> str:
    name = document.get("app") or document.get("ingress") or "app"
    backend = document.get("backend", "local")
    ready = "ready" if document.get("ready") else "not ready"
    lines = [f"{name} ({backend}): {document.get('state', '?')}, {ready}"]
    if document.get("message"):
        lines.append(f"  {document['message']}")
    bundle = document.get("bundle")
    if bundle:
        lines.append(f"  bundle {bundle.get('name')} {bundle.get('version')}, sha256 {bundle.get('sha256')}")
    lines.append(f"  {'DEPLOYMENT':<24} {'REPLICAS':>9}  {'VERSION':<12} STATUS")
    for deployment, view in document.get("deployments", {}).items():
        counts = f"{view.get('running_replicas', 0)}/{view.get('target_replicas', '?')}"
        version = view.get("version") or "-"
        state = view.get("status") or ("running" if view.get("running_replicas") else "starting")
        lines.append(f"  {deployment:<24} {counts:>9}  {version:<12} {state}")
        for replica in view.get("replicas", []):
            where = replica.get("node_ip") or replica.get("device") or ""
            pid = "" if replica.get("pid") is None else f"pid {replica['pid']} "
            replica_id, state = replica.get("id", "?"), replica.get("state", "?")
            lines.append(f"    {replica_id:<30} {state:<10} {pid}{where}".rstrip())
    if document.get("routers"):
        from servekit._cli.rollout import render_routers  # noqa: PLC0415

        lines.append("")
        lines.extend("  " + line for line in render_routers(document["routers"]).splitlines())
    return "\n".join(lines)
