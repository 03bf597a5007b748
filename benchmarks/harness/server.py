"""Start a benchmark server in a subprocess, wait for it, inspect and stop it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class ServerError(RuntimeError):
    """The server process died or never became ready."""


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def request(
    port: int,
    method: str,
    path: str,
    body: str | None = None,
    timeout: float = 2.0,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send one HTTP request to 127.0.0.1:``port`` (with extra `headers`); return (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    """GET ``path`` and decode the JSON body (raises on non-200)."""
    status, payload = request(port, "GET", path)
    if status != 200:
        raise ServerError(f"GET {path} -> {status}: {payload[:300]!r}")
    return json.loads(payload)


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a worker process started from a loop thread is a
    child of that thread, not of the main one)."""
    children = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(_children(current))
    return tree


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(member)
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of ``pid`` and its descendants."""
    pages = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            pages += int(Path(f"/proc/{member}/statm").read_text().split()[1])
    return pages * _PAGE_KB / 1024


class ServerProcess:
    """One ``benchmarks.workloads.launch`` subprocess bound to a free port."""

    def __init__(
        self, server: str, workload: str, log_dir: Path, env: dict[str, str], stack: str = "fast"
    ) -> None:
        """Describe the server; :meth:`start` launches it on ``stack`` (``fast`` or ``pure``)."""
        self.server = server
        self.workload = workload
        self.stack = stack
        self.port = free_port()
        self.log_path = log_dir / f"{server}-{workload}-{stack}-{self.port}.log"
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._proc is not None, "server not started"
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL of the POST endpoint."""
        return f"http://{HOST}:{self.port}/"

    def start(self) -> None:
        """Launch the process (the cold-start clock starts here)."""
        command = [
            sys.executable,
            "-m",
            "benchmarks.workloads.launch",
            self.server,
            self.workload,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--stack",
            self.stack,
        ]
        env = {**os.environ, **self._env, "PYTHONPATH": str(REPO_ROOT)}
        with self.log_path.open("wb") as log:
            self._started_at = time.perf_counter()
            self._proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, body: str, timeout_s: float = 60.0) -> float:
        """Poll ``POST /`` until it answers 200; return seconds since :meth:`start`.

        Connection errors and 502/503/504 mean "not ready yet"; any other
        status is a failure.
        """
        name = f"{self.server}/{self.workload}"
        deadline = self._started_at + timeout_s
        while time.perf_counter() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerError(f"{name} exited early:\n{self.log_tail()}")
            status = self._probe(body, deadline - time.perf_counter())
            if status == 200:
                return time.perf_counter() - self._started_at
            if status not in (None, 502, 503, 504):
                raise ServerError(f"{name}: POST / -> {status}:\n{self.log_tail()}")
            time.sleep(0.005)
        raise ServerError(f"{name} not ready in {timeout_s}s:\n{self.log_tail()}")

    def _probe(self, body: str, timeout_s: float) -> int | None:
        try:
            status, _ = request(self.port, "POST", "/", body, timeout=max(0.1, timeout_s))
        except (OSError, http.client.HTTPException):
            return None
        return status

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's combined stdout/stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the process (by pid)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
