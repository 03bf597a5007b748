"""Server entry point used by ``run.py``: one workload, one server, one process.

Usage::

    python -m benchmarks.workloads.launch baseline w1 --port 8001
    python -m benchmarks.workloads.launch servekit w3 --port 8002
    python -m benchmarks.workloads.launch servekit w2-process --port 8003   # servekit only

Both servers run uvicorn in this process with one worker, ``loop="uvloop"``,
``http="httptools"`` and no access log: the baseline calls ``uvicorn.run``
directly, servekit goes through ``sk.serve(..., blocking=True)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

SERVERS = ("baseline", "servekit")
WORKLOADS = ("w1", "w2", "w3", "w3-batched", "w2-process", "w2-sync", "w3-process", "step")
UVICORN_SETTINGS: dict[str, object] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "workers": 1,
    "log_level": "warning",
}


def serve_baseline(workload: str, host: str, port: int) -> None:
    """Serve a Starlette baseline with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from benchmarks.workloads.starlette_apps import BUILDERS

    uvicorn.run(BUILDERS[workload](), host=host, port=port, **UVICORN_SETTINGS)  # type: ignore[arg-type]


def serve_servekit(workload: str, host: str, port: int) -> None:
    """Serve the servekit version of a workload until SIGINT/SIGTERM."""
    import servekit as sk
    from benchmarks.workloads.servekit_apps import BUILDERS

    sk.serve(BUILDERS[workload](), host=host, port=port, blocking=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=SERVERS)
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the requested server (blocks)."""
    args = parse_args(argv)
    serve = serve_baseline if args.server == "baseline" else serve_servekit
    serve(args.workload, args.host, args.port)


if __name__ == "__main__":
    main()
