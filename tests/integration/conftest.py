"""Integration fixtures: real servers on 127.0.0.1 port 0, httpx clients, subprocess cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import servekit as sk

StartServer = Callable[..., sk.Server]


@pytest.fixture
def serve_app() -> Iterator[StartServer]:
    """Start `sk.serve(app, port=0, blocking=False, **options)`; every server is shut down after."""
    servers: list[sk.Server] = []

    def start(app: sk.Application, **options: Any) -> sk.Server:
        server = sk.serve(app, host="127.0.0.1", port=0, blocking=False, **options)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.shutdown(grace_s=2)


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (found by binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts (each in its own session, so its children go with it).

    Afterwards every one still running is killed with its process group, reaped, and its pipes closed.
    """
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children left by a reloading parent
            os.killpg(process.pid, signal.SIGKILL)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
