"""Drive ``wrk`` (the load generator) and parse its results.

A generated Lua script sets the POST body and, in ``done()``, prints one line
``BENCH_JSON {...}`` with the request count, error counters and latency
percentiles, so nothing depends on wrk's human-readable output format.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "BENCH_JSON "

_LUA_TEMPLATE = """\
wrk.method = "POST"
wrk.body = '__BODY__'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '__MARKER__{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result line."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and error counts."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    wrk_cpu_s: float

    @property
    def errors(self) -> int:
        """Non-2xx responses plus socket errors (connect, read, write, timeout)."""
        return self.non_2xx + self.socket_errors

    def to_dict(self) -> dict[str, float | int]:
        """Plain-JSON form, including ``errors``."""
        return {**asdict(self), "errors": self.errors}


def ensure_wrk() -> str:
    """Return the path of ``wrk``, installing it with apt-get when it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found on PATH: installing it with `apt-get install -y wrk` ...", file=sys.stderr)
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run([*prefix, *command], check=False, timeout=600)
    path = shutil.which("wrk")
    if not path:
        raise WrkError(
            "wrk is required and could not be installed automatically; "
            "install it (Debian/Ubuntu: `apt-get install wrk`, macOS: `brew install wrk`)."
        )
    return path


def write_lua_script(directory: Path, body: str, headers: dict[str, str] | None = None) -> Path:
    """Write the POST + JSON-report Lua script for ``body`` (and extra `headers`) and return its path."""
    if "'" in body or "\\" in body:
        raise ValueError("request body must not contain quotes or backslashes")
    script = _LUA_TEMPLATE.replace("__BODY__", body).replace("__MARKER__", MARKER)
    for name, value in (headers or {}).items():
        if any(c in name + value for c in "'\\\n"):
            raise ValueError(f"header {name!r} must not contain quotes, backslashes or newlines")
        script = script.replace("\ndone = ", f"wrk.headers['{name}'] = '{value}'\n\ndone = ", 1)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "post.lua"
    path.write_text(script)
    return path


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_output(stdout: str, connections: int, wrk_cpu_s: float) -> WrkResult:
    """Build a :class:`WrkResult` from wrk's stdout (the ``BENCH_JSON`` line)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise WrkError(f"wrk printed no {MARKER.strip()} line:\n{stdout}")
    raw = json.loads(line[len(MARKER) :])
    duration_s = raw["duration_us"] / 1e6
    return WrkResult(
        connections=connections,
        duration_s=duration_s,
        requests=raw["requests"],
        rps=raw["requests"] / duration_s if duration_s else 0.0,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        non_2xx=raw["status"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        wrk_cpu_s=wrk_cpu_s,
    )


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    timeout_s: float = 5.0,
) -> WrkResult:
    """Run wrk (1 thread, ``connections`` connections) for ``duration_s`` seconds."""
    command = [
        ensure_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    cpu_before = _children_cpu_s()
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    cpu = _children_cpu_s() - cpu_before
    if proc.returncode != 0:
        raise WrkError(f"wrk exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return parse_output(proc.stdout, connections, cpu)
