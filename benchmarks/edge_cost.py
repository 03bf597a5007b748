"""CPU per request of servekit's HTTP edge, in process: the ASGI app driven directly, no sockets.

    python -m benchmarks.edge_cost                               # W1 and W2, 7 interleaved rounds (~1 min)
    python -m benchmarks.edge_cost --requests 1000 --rounds 2    # smoke (seconds)
    python -m benchmarks.edge_cost --variants starlette,servekit --workloads w1

Through sockets (wrk) a point on this 2-core VM moves 20-40% between rounds, while the edge's own
cost is tens of microseconds per request. So this measures it the way a profiler would: the
exact ASGI app that uvicorn serves (built by `sk.serve`, run on its event loop) is called with
one request after another, and `time.process_time()` of this process (the loop, replica threads
and all) is divided by the requests. Variants run in interleaved rounds (one round of every
variant, then the next round), and the median round counts, so a slow moment hits all variants.

Variants: `starlette` (the same workload as a plain Starlette app: the floor), `servekit`
(defaults), and the others in `VARIANTS` (an option of `sk.serve` each, like metrics, tracing
or API keys), each compared with `servekit`. Results: `benchmarks/results/<date>-<host>-edge.{md,json}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servekit as sk
from benchmarks.harness import machine
from benchmarks.harness.server import REPO_ROOT
from benchmarks.workloads import SAMPLE_X, servekit_apps, starlette_apps

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Any
]
BODY = json.dumps({"x": SAMPLE_X}, separators=(",", ":")).encode()
RESULTS = REPO_ROOT / "benchmarks" / "results"
WORKLOADS = {"w1": servekit_apps.build_w1, "w2": servekit_apps.build_w2}
FLOORS = {"w1": starlette_apps.build_w1, "w2": starlette_apps.build_w2}


@dataclass(frozen=True)
class Variant:
    """One way of serving the workload: `sk.serve` options, request headers, environment."""

    serve: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    about: str = ""


_TRACED = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "200"}
_BENCH_KEY = "sk_edge_cost_benchmark_key_0000000000"
"""The benchmark's own API key (scope invoke); the keys file below holds only its hash."""


def _keys_file() -> str:
    """A keys file with `_BENCH_KEY`'s hash (the same path and content in every process)."""
    import tempfile

    from servekit._http.guards.keys import hash_key

    path = Path(tempfile.gettempdir()) / "servekit-edge-cost-keys.json"
    entry = {"name": "bench", "hash": hash_key(_BENCH_KEY), "scopes": ["invoke"]}
    path.write_text(json.dumps({"keys": [entry]}))
    return str(path)


VARIANTS: dict[str, Variant] = {
    "servekit": Variant(about="defaults (metrics and the dashboard on, no keys, no tracing)"),
    "metrics-off": Variant(serve={"metrics": False}, about="`metrics=False`: no metrics layer, no dashboard"),
    "auth+ratelimit": Variant(
        serve={"api_keys": _keys_file(), "rate_limit": "1000000/s burst 1000000"},
        headers={"authorization": f"Bearer {_BENCH_KEY}"},
        about="API keys (a Bearer key checked per request) and a per-key rate limit that never refuses",
    ),
    "tracing-1%": Variant(
        serve={"tracing": True},
        env={**_TRACED, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
        about="tracing, 1% of traces sampled, OTLP/HTTP to a counting sink",
    ),
    "tracing-100%": Variant(
        serve={"tracing": True},
        env={**_TRACED, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        about="tracing, every trace sampled, OTLP/HTTP to a counting sink",
    ),
    "tracing-100%-unexported": Variant(
        serve={"tracing": True},
        env={"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        about="tracing, every trace sampled, spans recorded but not exported (no exporter process)",
    ),
}
"""The servekit variants; `starlette` (the floor) is always measured too."""


def _scope(headers: Mapping[str, str]) -> dict[str, Any]:
    raw = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _drive(app: ASGIApp, headers: Mapping[str, str], requests: int) -> float:
    """CPU seconds of this process per request over `requests` sequential calls of `app`."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for _ in range(requests):
        await app(_scope(headers), receive, send)
    spent = time.process_time() - started
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(statuses)} requests failed (first status {bad[0]})")
    return spent / requests


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Served:
    """One variant's app in a process of its own (tracing is per process), driven in every round."""

    def __init__(self, workload: str, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        command = [sys.executable, "-m", "benchmarks.edge_cost", "--serve-one", f"{workload}:{name}"]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        self._ask("ready")

    def _ask(self, line: str) -> str:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"variant {self.name!r} exited (code {self._process.wait()})")
        return answer

    def measure(self, requests: int) -> float:
        """CPU microseconds per request over `requests` calls."""
        return float(self._ask(str(requests)))

    def close(self) -> None:
        self._ask("close")
        self._process.wait(timeout=60)


class _InProcess:
    """One variant's app, started once in this process and driven on request."""

    def __init__(self, workload: str, name: str) -> None:
        self.name = name
        self.variant = Variant() if name == "starlette" else VARIANTS[name]
        self._server: sk.Server | None = None
        with _environment(self.variant.env):
            if name == "starlette":
                self._app: ASGIApp = FLOORS[workload]()
                self._loop = asyncio.new_event_loop()
                self._run: Callable[[Any], Any] = self._loop.run_until_complete
            else:
                self._server = sk.serve(WORKLOADS[workload](), port=0, blocking=False, **self.variant.serve)
                front = self._server._front  # the app uvicorn serves, on its own loop
                self._app = front._asgi.app  # type: ignore[attr-defined]
                loop = front._task.get_loop()  # type: ignore[attr-defined]
                self._run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result()

    def measure(self, requests: int) -> float:
        """CPU microseconds per request over `requests` calls."""
        return float(self._run(_drive(self._app, self.variant.headers, requests))) * 1e6

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        else:
            self._loop.close()


@contextmanager
def _sink(variants: Sequence[str]) -> Iterator[dict[str, str]]:
    """A counting OTLP/HTTP sink in its own process while a tracing variant runs (its endpoint as env)."""
    if not any(VARIANTS.get(name, Variant()).serve.get("tracing") for name in variants):
        yield {}
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = REPO_ROOT / "examples" / "observability" / "otlp_receiver.py"
    command = [sys.executable, str(receiver), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def serve_one(target: str) -> int:
    """Serve one `workload:variant` and answer this process's stdin: a count measures, `close` stops."""
    workload, name = target.split(":", 1)
    served = _InProcess(workload, name)
    for line in sys.stdin:
        command = line.strip()
        if command == "close":
            served.close()
            print("closed", flush=True)
            return 0
        print("ready" if command == "ready" else served.measure(int(command)), flush=True)
    served.close()
    return 0


def run(workloads: Sequence[str], variants: Sequence[str], requests: int, rounds: int) -> dict[str, Any]:
    """Every variant of every workload: per round and median CPU microseconds per request."""
    results: dict[str, Any] = {}
    for workload in workloads:
        with _sink(variants) as env:
            served = [_Served(workload, name, env) for name in variants]
            try:
                for one in served:
                    one.measure(max(200, requests // 10))  # warm-up: caches, lazy imports, JIT-free paths
                per_round: dict[str, list[float]] = {one.name: [] for one in served}
                for index in range(rounds):
                    order = served if index % 2 == 0 else list(reversed(served))
                    for one in order:
                        per_round[one.name].append(one.measure(requests))
            finally:
                for one in served:
                    one.close()
        results[workload] = {
            name: {"rounds": [round(v, 2) for v in values], "median_us": round(statistics.median(values), 2)}
            for name, values in per_round.items()
        }
    return results


def render(results: dict[str, Any], settings: dict[str, Any], described: dict[str, Any]) -> str:
    """The results as a Markdown report."""
    lines = [
        f"# servekit's edge, CPU per request in process — {described['date']}, {machine.host_tag()}",
        "",
        "Command: `python -m benchmarks.edge_cost"
        f" --requests {settings['requests']} --rounds {settings['rounds']}`",
        "",
        f"Machine: {described['cpu']}, {described['nproc']} cores, Python {described['python']}.",
        "One request at a time, the ASGI app called directly (no sockets, no HTTP parsing: uvicorn's "
        "share is the same for every variant); CPU of the whole process per request, median of "
        "interleaved rounds.",
        "",
    ]
    for workload, variants in results.items():
        floor = variants.get("starlette", {}).get("median_us")
        base = variants.get("servekit", {}).get("median_us")
        lines += [
            f"## {workload.upper()}",
            "",
            "| variant | what | µs/request (median) | rounds | over Starlette | vs servekit defaults |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in variants.items():
            about = "plain Starlette app (the floor)" if name == "starlette" else VARIANTS[name].about
            median = row["median_us"]
            over = "—" if floor is None or name == "starlette" else f"+{median - floor:.1f} µs"
            versus = (
                "—"
                if base is None or name in ("starlette", "servekit")
                else f"{median / base:.3f}x ({median - base:+.1f} µs)"
            )
            rounds = ", ".join(f"{v:.1f}" for v in row["rounds"])
            lines.append(f"| {name} | {about} | {median:.1f} | {rounds} | {over} | {versus} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="w1,w2", help="comma-separated: w1, w2")
    parser.add_argument(
        "--variants", default=None, help="comma-separated; default: starlette and every variant"
    )
    parser.add_argument("--requests", type=int, default=5000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=None, help="results path stem (default: results/<date>-<host>-edge)"
    )
    parser.add_argument("--serve-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_one:
        return serve_one(args.serve_one)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    variants = (
        ["starlette", *VARIANTS] if args.variants is None else [v.strip() for v in args.variants.split(",")]
    )
    unknown = [v for v in variants if v != "starlette" and v not in VARIANTS] + [
        w for w in workloads if w not in WORKLOADS
    ]
    if unknown:
        parser.error(f"unknown workload or variant: {', '.join(unknown)}")
    results = run(workloads, variants, args.requests, args.rounds)
    described = machine.describe(None)
    settings = {"requests": args.requests, "rounds": args.rounds}
    stem = args.out or RESULTS / f"{described['date'][:10]}-{machine.host_tag()}-edge"
    stem.parent.mkdir(parents=True, exist_ok=True)
    report = render(results, settings, described)
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": described, "settings": settings, "results": results}, indent=2)
    )
    stem.with_suffix(".md").write_text(report + "\n")
    print(report)
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
