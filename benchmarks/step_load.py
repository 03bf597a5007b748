"""From a step in load to an added process replica serving, and back down.

    python -m benchmarks.step_load             # < 60 s, all traffic to 127.0.0.1

Starts ``python -m benchmarks.workloads.launch servekit step`` (an in-process HTTP
ingress in front of ``StepWorker``: a process deployment autoscaled between 1 and 3
replicas, target 2 ongoing requests each, upscale delay 1 s; see
``workloads/process_apps.py``).  Each request, ``GET /work?seconds=0.05``, holds a
worker for 50 ms without using CPU and answers the worker's pid, so the client knows
which replica served it.

Timeline: light load (1 closed-loop client) for ``--light-s``; then the step to
``--heavy-clients`` clients, held until every added replica has served and then
``--hold-s`` more (at most ``--max-heavy-s``); then no load until the deployment is
back to its minimum (at most ``--max-down-s``).  ``GET /-/status`` is sampled every
``--sample-ms``.  Reported, from the step: the autoscaler first asking for more
replicas (the start of the upscale delay, from the decision's reason), its decision
(target_replicas rising), each added replica appearing (starting), running, and
serving its first request (the first response carrying its pid); from the load
stopping: the decision to scale down and the replicas being gone.

The section (summary + raw timeline: every status sample and every request) is merged
into ``--out`` (default ``results/<date>-<host>-process``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python benchmarks/step_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import results_file
from benchmarks.harness.cpuwatch import CpuWatch, describe
from benchmarks.harness.process_report import step_load_lines
from benchmarks.harness.server import HOST, ServerProcess
from benchmarks.workloads.process_apps import STEP_AUTOSCALING

DEPLOYMENT = "StepWorker"
HELD = re.compile(r"\((\d+(?:\.\d+)?) of (\d+(?:\.\d+)?) s\)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="step load against an autoscaled process deployment",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--light-s", type=float, default=4.0, help="light load before the step")
    parser.add_argument("--light-clients", type=int, default=1)
    parser.add_argument("--heavy-clients", type=int, default=8)
    parser.add_argument("--work-s", type=float, default=0.05, help="time each request holds a worker")
    parser.add_argument("--hold-s", type=float, default=2.0, help="heavy load after all added serve")
    parser.add_argument("--max-heavy-s", type=float, default=15.0)
    parser.add_argument("--max-down-s", type=float, default=15.0)
    parser.add_argument("--sample-ms", type=float, default=100.0, help="/-/status sampling period")
    parser.add_argument("--out", type=Path, default=None, help="results file stem to merge into")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


# --- a minimal keep-alive HTTP/1.1 client ------------------------------------


class Connection:
    """One keep-alive connection to 127.0.0.1:port (GET only, Content-Length bodies)."""

    def __init__(self, port: int) -> None:
        """Not connected until the first request."""
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """``GET path``; returns (status, body)."""
        return await asyncio.wait_for(self._get(path), timeout_s)

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        """Close the socket."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- the run ---------------------------------------------------------------


class StepRun:
    """Drives the load, samples the status, and keeps the raw timeline."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        """Times are ``time.monotonic()`` (the server's autoscaler uses the same clock)."""
        self.port = port
        self.args = args
        self.samples: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self.pids: set[int] = set()
        self.lanes: list[asyncio.Task[None]] = []
        self.stop_load = asyncio.Event()
        self.stop_sampling = asyncio.Event()

    async def lane(self, index: int) -> None:
        """One closed-loop client: request, wait for the answer, repeat."""
        conn = Connection(self.port)
        path = f"/work?seconds={self.args.work_s}"
        try:
            while not self.stop_load.is_set():
                sent = time.monotonic()
                record: dict[str, Any] = {"lane": index, "sent": sent}
                try:
                    status, body = await conn.get(path)
                    record["status"] = status
                    if status == 200:
                        record["pid"] = json.loads(body)["pid"]
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    record["error"] = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = Connection(self.port)
                record["done"] = time.monotonic()
                self.requests.append(record)
        finally:
            conn.close()

    async def sample(self) -> None:
        """``GET /-/status`` every ``--sample-ms``; keep the fields the timeline needs."""
        conn = Connection(self.port)
        period = self.args.sample_ms / 1e3
        next_at = time.monotonic()
        try:
            while not self.stop_sampling.is_set():
                at = time.monotonic()
                try:
                    status, body = await conn.get("/-/status", timeout_s=5.0)
                    view = json.loads(body)["deployments"][DEPLOYMENT] if status == 200 else None
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, KeyError):
                    conn.close()
                    conn = Connection(self.port)
                    view = None
                if view is not None:
                    sample = compact(at, time.monotonic(), view)
                    self.pids.update(r["pid"] for r in sample["replicas"] if r["pid"])
                    sample["alive_pids"] = _alive(self.pids)
                    self.samples.append(sample)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            conn.close()

    def start_lanes(self, count: int) -> None:
        """Add lanes up to ``count`` in total."""
        while len(self.lanes) < count:
            self.lanes.append(asyncio.ensure_future(self.lane(len(self.lanes))))

    async def run(self) -> None:
        """Light load, step, hold, stop, wait for the scale-down."""
        args = self.args
        sampler = asyncio.ensure_future(self.sample())
        self.marks["light"] = time.monotonic()
        self.start_lanes(args.light_clients)
        await asyncio.sleep(args.light_s)
        self.marks["step"] = step = time.monotonic()
        self.start_lanes(args.heavy_clients)
        print(f"   step to {args.heavy_clients} clients", file=sys.stderr, flush=True)
        await self._until(lambda: self._all_added_serving(step), args.max_heavy_s)
        await asyncio.sleep(args.hold_s)
        self.marks["stop"] = stop = time.monotonic()
        self.stop_load.set()
        await asyncio.gather(*self.lanes)
        self.marks["load_drained"] = time.monotonic()
        print("   load stopped", file=sys.stderr, flush=True)
        minimum = int(STEP_AUTOSCALING["min_replicas"])
        await self._until(lambda: self._back_to(minimum, stop), args.max_down_s)
        await asyncio.sleep(0.5)
        self.marks["end"] = time.monotonic()
        self.stop_sampling.set()
        await sampler

    async def _until(self, condition: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            await asyncio.sleep(0.05)
        return False

    def _all_added_serving(self, step: float) -> bool:
        last = self.samples[-1] if self.samples else None
        if last is None or last["target"] <= 1 or last["running"] < last["target"]:
            return False
        served = {r.get("pid") for r in self.requests if r["sent"] >= step}
        return all(replica["pid"] in served for replica in last["replicas"])

    def _back_to(self, minimum: int, stop: float) -> bool:
        last = self.samples[-1] if self.samples else None
        return bool(
            last and last["at"] > stop and last["target"] == minimum and len(last["replicas"]) == minimum
        )


def _alive(pids: set[int]) -> list[int]:
    """The pids that still have a process (a reaped worker has none)."""
    return sorted(pid for pid in pids if Path(f"/proc/{pid}").exists())


def compact(at: float, answered: float, view: dict[str, Any]) -> dict[str, Any]:
    """The fields of one ``/-/status`` deployment view the timeline keeps."""
    decision = view.get("autoscaling") or {}
    return {
        "at": at,
        "answered": answered,
        "target": view["target_replicas"],
        "running": view["running_replicas"],
        "starting": view.get("starting_replicas"),
        "ongoing": view.get("ongoing"),
        "queued": view.get("queued"),
        "replicas": [
            {"id": r["id"], "state": r["state"], "pid": r.get("pid"), "ongoing": r.get("ongoing")}
            for r in view["replicas"]
        ],
        "decision": {k: decision.get(k) for k in ("desired", "reason", "at")} if decision else None,
    }


# --- analysis --------------------------------------------------------------


def _first(samples: Sequence[dict[str, Any]], after: float, test: Any) -> dict[str, Any] | None:
    return next((s for s in samples if s["at"] >= after and test(s)), None)


def _pending_since(samples: Sequence[dict[str, Any]], after: float, direction: str) -> float | None:
    """When the autoscaler first wanted to scale ``direction``: a decision's time minus the time held."""
    for s in samples:
        decision = s["decision"]
        if s["at"] < after or not decision or not decision["reason"] or decision["at"] is None:
            continue
        held = HELD.search(decision["reason"]) or re.search(
            rf"{direction}scale held (\d+(?:\.\d+)?) s", decision["reason"]
        )
        if f"{direction}scale" in decision["reason"] and held:
            return float(decision["at"]) - float(held.group(1))
    return None


def _decided(samples: Sequence[dict[str, Any]], after: float, direction: str) -> float | None:
    """The exact time of the ``scaling up/down`` decision, when a sample caught that decision."""
    for s in samples:
        decision = s["decision"]
        if s["at"] >= after and decision and f"scaling {direction} " in (decision["reason"] or ""):
            return float(decision["at"])
    return None


def _since(value: float | None, origin: float) -> float | None:
    return None if value is None else value - origin


def _added_replicas(run: StepRun, initial: set[str]) -> list[dict[str, Any]]:
    """Each replica that appeared after the step: when it was listed running, served, exited."""
    step, stop = run.marks["step"], run.marks["stop"]
    replicas: dict[str, dict[str, Any]] = {}
    for s in run.samples:
        if s["at"] < step:
            continue
        for r in s["replicas"]:
            if r["id"] in initial or s["at"] > stop:
                continue
            entry = replicas.setdefault(
                r["id"], {"id": r["id"], "pid": r["pid"], "running_s": s["at"] - step}
            )
            entry["pid"] = entry["pid"] or r["pid"]
    for entry in replicas.values():
        served = [r for r in run.requests if r.get("pid") == entry["pid"] and r["sent"] >= step]
        if served:
            first = min(served, key=lambda r: r["done"])
            entry["first_served_s"] = first["done"] - step
            entry["first_served_sent_s"] = first["sent"] - step
            entry["requests_served"] = len(served)
        gone = _first(run.samples, stop, lambda s, pid=entry["pid"]: pid not in s["alive_pids"])
        entry["exited_after_stop_s"] = _since(gone["at"], stop) if gone else None
        entry["kept"] = bool(run.samples) and any(
            r["pid"] == entry["pid"] for r in run.samples[-1]["replicas"]
        )
    return sorted(replicas.values(), key=lambda e: e["running_s"])


def analyse(run: StepRun) -> dict[str, Any]:
    """Turn the raw timeline into the reported intervals (seconds from the step, or from the stop)."""
    samples, requests, marks = run.samples, run.requests, run.marks
    step, stop = marks["step"], marks["stop"]
    minimum = int(STEP_AUTOSCALING["min_replicas"])
    before = [s for s in samples if s["at"] < step]
    initial = {r["id"] for r in before[-1]["replicas"]} if before else set()
    up = _first(samples, step, lambda s: s["target"] > minimum)
    starting = _first(samples, step, lambda s: (s["starting"] or 0) > 0)
    down = _first(samples, stop, lambda s: s["target"] < (up["target"] if up else 2))
    at_min = _first(samples, stop, lambda s: s["target"] == minimum and len(s["replicas"]) == minimum)
    served = [r for r in requests if r.get("status") == 200]
    return {
        "sample_period_s": run.args.sample_ms / 1e3,
        "sample_lag_s": statistics.median(s["answered"] - s["at"] for s in samples) if samples else None,
        "up": {
            "wanted_s": _since(_pending_since(samples, step, "up"), step),
            "decision_s": _since(_decided(samples, step, "up"), step),
            "decision_seen_s": _since(up["at"] if up else None, step),
            "target": up["target"] if up else None,
            "starting_seen_s": _since(starting["at"] if starting else None, step),
            "replicas": _added_replicas(run, initial),
        },
        "down": {
            "load_stopped_after_step_s": stop - step,
            "wanted_s": _since(_pending_since(samples, stop, "down"), stop),
            "decision_s": _since(_decided(samples, stop, "down"), stop),
            "decision_seen_s": _since(down["at"] if down else None, stop),
            "back_to_min_s": _since(at_min["at"] if at_min else None, stop),
        },
        "requests": {
            "total": len(requests),
            "errors": sum(1 for r in requests if r.get("status") != 200),
            "light_rps": _rate(served, marks["light"], step),
            "heavy_rps": _rate(served, step, stop),
            "heavy_p50_ms": _latency(served, step, stop, 50),
            "heavy_p99_ms": _latency(served, step, stop, 99),
        },
    }


def _rate(requests: Sequence[dict[str, Any]], start: float, end: float) -> float | None:
    done = [r for r in requests if start <= r["done"] < end]
    return len(done) / (end - start) if end > start else None


def _latency(requests: Sequence[dict[str, Any]], start: float, end: float, pct: float) -> float | None:
    values: list[float] = sorted(r["done"] - r["sent"] for r in requests if start <= r["sent"] < end)
    if not values:
        return None
    return 1e3 * values[min(len(values) - 1, int(pct / 100 * len(values)))]


def _rebase(run: StepRun) -> dict[str, Any]:
    """The raw timeline with times in seconds from the step."""
    step = run.marks["step"]
    samples = [
        {
            **s,
            "at": round(s["at"] - step, 4),
            "answered": round(s["answered"] - step, 4),
            "decision": (
                {**s["decision"], "at": round(s["decision"]["at"] - step, 4)}
                if s["decision"] and s["decision"]["at"] is not None
                else s["decision"]
            ),
        }
        for s in run.samples
    ]
    requests = [
        {**r, "sent": round(r["sent"] - step, 4), "done": round(r["done"] - step, 4)} for r in run.requests
    ]
    marks = {k: round(v - step, 4) for k, v in run.marks.items()}
    return {
        "time_zero": "the step (monotonic clock)",
        "marks_s": marks,
        "samples": samples,
        "requests": requests,
    }


async def _drive(port: int, args: argparse.Namespace) -> StepRun:
    run = StepRun(port, args)
    await run.run()
    return run


def _wait_ready(srv: ServerProcess, timeout_s: float = 60.0) -> float:
    """Poll ``/-/status`` until StepWorker has a running replica; seconds since start."""
    from benchmarks.harness.server import ServerError, get_json

    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        if srv._proc is not None and srv._proc.poll() is not None:
            raise ServerError(f"step server exited early:\n{srv.log_tail()}")
        try:
            view = get_json(srv.port, "/-/status")["deployments"][DEPLOYMENT]
            if view["running_replicas"] >= 1:
                return time.monotonic() - started
        except (OSError, ServerError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    raise ServerError(f"step server not ready in {timeout_s} s:\n{srv.log_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step, print the table, merge the section into the results file."""
    args = parse_args(argv)
    command = "python -m benchmarks.step_load " + shlex.join(sys.argv[1:] if argv is None else argv)
    print("== step load: autoscaled process deployment", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="servekit-step-") as tmp:
        srv = ServerProcess("servekit", "step", Path(tmp), {})
        with srv:
            ready_s = _wait_ready(srv)
            with CpuWatch() as watch:  # this process tree: the client, the server and its workers
                run = asyncio.run(_drive(srv.port, args))
            log = srv.log_tail(80)
    section: dict[str, Any] = {
        "command": command.strip(),
        "settings": {
            "autoscaling": STEP_AUTOSCALING,
            "max_ongoing_requests": 16,
            "light_clients": args.light_clients,
            "heavy_clients": args.heavy_clients,
            "work_s": args.work_s,
            "light_s": args.light_s,
            "hold_s": args.hold_s,
            "sample_ms": args.sample_ms,
        },
        "server_ready_s": ready_s,
        "summary": analyse(run),
        "cpu": watch.result,
        "server_log_tail": log.splitlines()[-20:],
        "timeline": _rebase(run),
    }
    print("\n".join(step_load_lines(section)))
    print(f"   {describe(watch.result)}", file=sys.stderr)
    if not args.no_write:
        stem = args.out if args.out is not None else results_file.default_stem()
        json_path, md_path = results_file.merge_section(Path(stem), "step_load", section)
        print(f"\nwrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
