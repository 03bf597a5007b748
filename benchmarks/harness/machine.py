"""Describe the machine and software versions a benchmark ran on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from benchmarks.harness.server import REPO_ROOT

PACKAGES = ("torch", "uvicorn", "starlette", "uvloop", "httptools", "pydantic")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def servekit_version() -> str:
    """servekit's version from its metadata, else from ``servekit/_version.py``."""
    version = _version("servekit")
    if version != "not installed":
        return version
    try:
        text = (REPO_ROOT / "servekit" / "_version.py").read_text()
    except OSError:
        return "unknown"
    match = re.search(r"""__version__\s*=\s*["']([^"']+)""", text)
    return match.group(1) if match else "unknown"


def _wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def host_tag() -> str:
    """A short filesystem-safe name for this host."""
    name = re.sub(r"[^a-z0-9]+", "-", socket.gethostname().lower()).strip("-")
    return name[:24] or "host"


def describe(wrk: str | None) -> dict[str, object]:
    """Machine, OS and package versions as a JSON-ready dict (``wrk=None``: wrk not used)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": round(_ram_gib(), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "servekit": servekit_version(),
        "wrk": _wrk_version(wrk) if wrk else "not used",
        **{package: _version(package) for package in PACKAGES},
    }
