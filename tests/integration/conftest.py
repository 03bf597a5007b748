"""Integration fixtures: real servers on 127.0.0.1 port 0, httpx clients, subprocess cleanup."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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


def _postgres_bin() -> Path:
    """The newest Debian PostgreSQL's bin folder, installing the `postgresql` package if needed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, capture_output=True
        )
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server from Debian's package on 127.0.0.1 (trust auth, fsync off).

    PostgreSQL refuses to run as root: as root (CI) the cluster lives in a folder owned by the
    `postgres` user under /var/lib/postgresql and its programs run as that user. Yields the
    server's URL (database `postgres`); the cluster is stopped and removed after the session.
    """
    bin_dir = _postgres_bin()
    root = os.geteuid() == 0
    user = "postgres" if root else None
    data = Path(tempfile.mkdtemp(prefix="servekit-test-", dir="/var/lib/postgresql" if root else None))
    if root:
        shutil.chown(data, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True, user=user, cwd=data)
    run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    run([bin_dir / "pg_ctl", "-D", data, "-l", data / "server.log", "-o", options, "-w", "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the test PostgreSQL server."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
