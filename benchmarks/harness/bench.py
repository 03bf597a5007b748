"""Measurements: throughput/latency per case, cold start and RSS, model capacity,
and ``sk.run`` readiness of the classifier example."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness.server import REPO_ROOT, ServerError, ServerProcess, get_json, tree_cpu_s
from benchmarks.harness.server import tree_rss_mb as rss_mb
from benchmarks.harness.wrk import WrkError, WrkResult, run_wrk
from benchmarks.workloads import TORCH_THREADS_ENV

CLASSIFIER_APP = REPO_ROOT / "examples" / "classifier" / "app.py"
Row = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """How long and how hard to load each server."""

    warmup_s: float
    duration_s: float
    concurrency: tuple[int, ...]
    torch_threads: int
    wrk_timeout_s: float
    cold_starts: int
    body: str
    lua_script: Path
    log_dir: Path
    repeat: int = 1
    settle_s: float = 1.0

    @property
    def env(self) -> dict[str, str]:
        """Environment added to every server / probe subprocess."""
        return {TORCH_THREADS_ENV: str(self.torch_threads)}


@dataclass(frozen=True)
class Case:
    """One server configuration of one workload."""

    workload: str
    label: str
    server: str
    app: str
    role: str
    stats_path: str | None = None
    stack: str = "fast"
    """``fast`` (uvloop + httptools) or ``pure`` (asyncio + h11), for both servers."""


def batch_counters(payload: Any) -> tuple[int, int]:
    """Sum ``batches``/``items`` over every stats dict found in a JSON payload."""
    if isinstance(payload, dict):
        if isinstance(payload.get("batches"), int) and isinstance(payload.get("items"), int):
            return payload["batches"], payload["items"]
        parts = [batch_counters(value) for value in payload.values()]
    elif isinstance(payload, list):
        parts = [batch_counters(value) for value in payload]
    else:
        return 0, 0
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def cpu_stat() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return fields[7], sum(fields)


def _counters(srv: ServerProcess, case: Case) -> tuple[int, int] | None:
    return batch_counters(get_json(srv.port, case.stats_path)) if case.stats_path else None


def _base_row(case: Case, concurrency: int) -> Row:
    return {
        "workload": case.workload,
        "label": case.label,
        "server": case.server,
        "app": case.app,
        "role": case.role,
        "stack": case.stack,
        "concurrency": concurrency,
        "error": None,
    }


def _batch_fields(before: tuple[int, int] | None, after: tuple[int, int] | None) -> Row:
    if before is None or after is None:
        return {"mean_batch": None}
    batches, items = after[0] - before[0], after[1] - before[1]
    return {"batches": batches, "items": items, "mean_batch": items / batches if batches else None}


def _wrk(srv: ServerProcess, concurrency: int, seconds: float, settings: Settings) -> WrkResult:
    return run_wrk(srv.url, settings.lua_script, concurrency, seconds, settings.wrk_timeout_s)


def measure_point(srv: ServerProcess, case: Case, concurrency: int, settings: Settings) -> Row:
    """Warm up, then one measured wrk window at ``concurrency``; return its row."""
    row = _base_row(case, concurrency)
    try:
        if settings.warmup_s > 0:
            _wrk(srv, concurrency, settings.warmup_s, settings)
        before, cpu_before, stat_before = _counters(srv, case), tree_cpu_s(srv.pid), cpu_stat()
        result = _wrk(srv, concurrency, settings.duration_s, settings)
        cpu, stat_after = tree_cpu_s(srv.pid) - cpu_before, cpu_stat()
        after = _counters(srv, case)
    except (WrkError, ServerError, OSError, subprocess.TimeoutExpired) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row.update(result.to_dict())
    row.update(_batch_fields(before, after))
    row["server_cpu_pct"] = 100 * cpu / result.duration_s
    row["wrk_cpu_pct"] = 100 * result.wrk_cpu_s / result.duration_s
    total = stat_after[1] - stat_before[1]
    row["steal_pct"] = 100 * (stat_after[0] - stat_before[0]) / total if total else 0.0
    return row


def run_case(case: Case, settings: Settings) -> list[Row]:
    """Start the case's server once and measure every concurrency level."""
    print(f"== {case.workload} {case.label}", file=sys.stderr, flush=True)
    with ServerProcess(case.server, case.app, settings.log_dir, settings.env, case.stack) as srv:
        try:
            ready_s = srv.wait_ready(settings.body)
        except ServerError as exc:
            print(f"   server failed: {exc}", file=sys.stderr, flush=True)
            return [{**_base_row(case, c), "error": f"ServerError: {exc}"} for c in settings.concurrency]
        rows = []
        for concurrency in settings.concurrency:
            row = measure_point(srv, case, concurrency, settings)
            row["ready_s"] = ready_s
            _print_row(row)
            rows.append(row)
            time.sleep(settings.settle_s)
    time.sleep(settings.settle_s)
    return rows


def _print_row(row: Row) -> None:
    if row["error"]:
        text = f"ERROR {row['error'][:300]}"
    else:
        batch = f" batch={row['mean_batch']:.1f}" if row.get("mean_batch") else ""
        text = (
            f"{row['rps']:8.0f} req/s  p50={row['p50_ms']:.2f}ms p99={row['p99_ms']:.2f}ms"
            f" err={row['errors']}{batch} cpu(server/wrk)="
            f"{row['server_cpu_pct']:.0f}%/{row['wrk_cpu_pct']:.0f}% steal={row['steal_pct']:.0f}%"
        )
    print(f"   c={row['concurrency']:<3} {text}", file=sys.stderr, flush=True)


def cold_start(server: str, settings: Settings, idle_s: float = 1.0) -> Row:
    """Median time from process start to the first 200 of W1, and idle RSS after it."""
    starts: list[float] = []
    rss: list[float] = []
    error = None
    for _ in range(settings.cold_starts):
        with ServerProcess(server, "w1", settings.log_dir, settings.env) as srv:
            try:
                starts.append(srv.wait_ready(settings.body))
            except ServerError as exc:
                error = f"ServerError: {exc}"
                break
            time.sleep(idle_s)
            rss.append(rss_mb(srv.pid))
        time.sleep(0.5)
    return {
        "server": server,
        "cold_start_s": statistics.median(starts) if starts else None,
        "cold_start_samples_s": starts,
        "idle_rss_mb": statistics.median(rss) if rss else None,
        "error": error,
    }


def _python_json(module: str, settings: Settings, timeout_s: float = 180.0) -> Row:
    env = {**os.environ, **settings.env, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"{module} exited {proc.returncode}:\n{tail}"}
    result: Row = json.loads(lines[-1])
    return result


def model_capacity(settings: Settings) -> Row:
    """W3 batch-1 vs batch-32 timings, measured in a fresh process."""
    print("== W3 model capacity", file=sys.stderr, flush=True)
    return _python_json("benchmarks.harness.capacity", settings)


def classifier_ready(settings: Settings, runs: int = 3) -> Row:
    """``sk.run`` of examples/classifier beyond ``import torch``: median of ``runs`` processes."""
    if not CLASSIFIER_APP.exists():
        return {"skipped": f"{CLASSIFIER_APP.relative_to(REPO_ROOT)} does not exist"}
    print("== classifier sk.run readiness", file=sys.stderr, flush=True)
    samples = [_python_json("benchmarks.harness.classifier_ready", settings) for _ in range(runs)]
    good = [s for s in samples if "error" not in s]
    if not good:
        return {"error": samples[-1]["error"], "samples": samples}
    keys = ("import_servekit_s", "import_app_s", "sk_run_s", "ready_beyond_torch_s")
    summary: Row = {key: statistics.median(s[key] for s in good) for key in keys}
    summary["samples"] = samples
    return summary


def run_cases(cases: Sequence[Case], settings: Settings) -> list[Row]:
    """Measure every case, ``settings.repeat`` rounds interleaved; keep the best of each point.

    Interference on a shared VM (CPU steal) only ever slows a run down, so the
    round with the highest req/s is the least disturbed one; all rounds' req/s
    are kept in ``rps_samples``.
    """
    rounds: list[list[Row]] = []
    for index in range(settings.repeat):
        if settings.repeat > 1:
            print(f"# round {index + 1}/{settings.repeat}", file=sys.stderr, flush=True)
        rounds.append([row for case in cases for row in run_case(case, settings)])
    return [best_of(list(samples)) for samples in zip(*rounds, strict=True)]


def best_of(samples: list[Row]) -> Row:
    """The successful sample with the highest req/s (else the last), plus all req/s values."""
    good = [row for row in samples if not row["error"]]
    best = dict(max(good, key=lambda row: row["rps"]) if good else samples[-1])
    best["rps_samples"] = [row.get("rps") for row in samples]
    return best
