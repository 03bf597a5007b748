"""Start the app `servekit bench` loads when its target is `module:app` (or a file or bundle), and
stop it after: `servekit serve TARGET --port 0` in a child process, so the server and the load
generator never share a CPU-bound event loop.

A target and extra `servekit serve` flags in; the server's base URL out, once it is ready.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

_SERVING = re.compile(r"^servekit: serving .* at (https?://\S+)\s*$")
_LOG_LINES = 20


class LaunchError(RuntimeError):
    """The app did not start; the message carries the end of its log."""


@contextlib.contextmanager
def served(target: str, serve_args: str = "", start_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve `target` on 127.0.0.1 (a free port) for the `with` block; yields its base URL."""
    command = [
        sys.executable,
        "-m",
        "servekit",
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "warning",
        *shlex.split(serve_args),
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its worker processes go with it
    )
    log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
    found: list[str] = []
    announced = threading.Event()
    reader = threading.Thread(target=_read_log, args=(process, log, found, announced), daemon=True)
    reader.start()
    try:
        url = _await_url(process, found, announced, log, start_timeout_s)
        _await_ready(process, url, log, start_timeout_s)
        yield url
    finally:
        _stop(process)
        reader.join(timeout=5)


def _read_log(
    process: subprocess.Popen[str], log: collections.deque[str], found: list[str], announced: threading.Event
) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line.rstrip())
        match = _SERVING.match(line)
        if match and not found:
            found.append(match.group(1))
            announced.set()
    announced.set()  # the log ended: the process exited


def _await_url(
    process: subprocess.Popen[str],
    found: list[str],
    announced: threading.Event,
    log: collections.deque[str],
    timeout_s: float,
) -> str:
    if not announced.wait(timeout_s) or not found:
        reason = "exited" if process.poll() is not None else f"did not start within {timeout_s:g} s"
        raise LaunchError(f"the app {reason}; its log ended with:\n" + "\n".join(log))
    return found[0]


def _await_ready(
    process: subprocess.Popen[str], url: str, log: collections.deque[str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError("the app exited; its log ended with:\n" + "\n".join(log))
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{url}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise LaunchError(f"the app was not ready within {timeout_s:g} s (GET {url}/readyz)")


def _stop(process: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    """SIGINT (a graceful drain), then SIGKILL for the whole group past `grace_s`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # worker processes it left, if any
    process.wait(timeout=10)
