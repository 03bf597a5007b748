"""Support for the behaviour suite: how each backend starts an app, and what a test gets back."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import servekit as sk

HANDLE_BACKENDS = ["local", "local-process", "ray"]
"""Where handle calls are checked: in-process replicas, worker-process replicas, Ray actors."""
HTTP_BACKENDS = ["local", "ray"]
"""Where HTTP is checked: the local server (uvicorn), Ray Serve's proxy."""


@dataclass(frozen=True)
class RayCluster:
    address: str
    http_port: int
    head_node_id: str
    gpu_node_id: str
    nodes: Any = None
    """The `ray.cluster_utils.Cluster` itself, for tests that add or remove a node."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Backend:
    """Starts apps on one backend the way a user would: `sk.run(...)` and `sk.serve(...)`."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self._request = request
        self.ray: RayCluster | None = request.getfixturevalue("ray_cluster") if name == "ray" else None

    def run(self, app: sk.Application) -> sk.AppHandle:
        if self.name == "ray":
            return sk.run(app, backend="ray")
        return sk.run(app, isolation="process" if self.name == "local-process" else None)

    def serve(self, app: sk.Application, **options: Any) -> sk.Server:
        if self.ray is not None:
            return sk.serve(app, port=self.ray.http_port, blocking=False, backend="ray", **options)
        return sk.serve(app, host="127.0.0.1", port=0, blocking=False, **options)


@dataclass(frozen=True)
class ServedShop:
    server: sk.Server
    gates: Path
    backend: str

    @property
    def url(self) -> str:
        return self.server.url

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()
