"""servekit on Ray against the same apps written directly for Ray Serve, in one run, on one Ray.

    python -m benchmarks.ray_backend            # W1 + W2, c=1,16,64, 8 rounds, cold start, memory (~12 min)
    python -m benchmarks.ray_backend --quick    # 1 round, short points (~3 min)

One local Ray (8 logical CPUs on this 2-core machine, so the W2 replicas at 1 CPU each fit)
with Serve's proxy on a free port. Per workload both apps run side by side: the servekit
version (`workloads/servekit_apps.py`, through `sk.serve(..., backend="ray")`) at `/` and the
Ray Serve version (`workloads/rayserve_apps.py`) at `/rayserve/`; wrk (1 thread) drives Ray
Serve's proxy for both, one point on each in turn, so the machine's slow moments hit both
(on this shared VM a point can vary by +-40% between rounds). Best round per point for req/s
(interference only slows a run down), median CPU per request. Also: time to start Ray and
Serve, each app's time from deploy to first 200, and the memory of every process with the
app idle, next to the local runtime's.

Results: `benchmarks/results/<date>-<host>-ray.{md,json}` (or `--out STEM`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import machine
from benchmarks.harness.server import REPO_ROOT, ServerProcess, free_port, request, tree_cpu_s, tree_rss_mb
from benchmarks.harness.wrk import ensure_wrk, run_wrk, write_lua_script
from benchmarks.workloads import SAMPLE_X

BODY = json.dumps({"x": SAMPLE_X}, separators=(",", ":"))
RESULTS = REPO_ROOT / "benchmarks" / "results"
SIDES = ("ray-serve", "servekit")
WORKLOADS = ("w1", "w2")
TARGET_RATIO = 0.95  # servekit adds at most 5% over the same app on Ray Serve
RAY_CPUS = 8

Row = dict[str, Any]


RAY_PREFIX = "/rayserve"
"""Route prefix of the Ray Serve app, so both apps serve at once (servekit's routes are absolute: "/")."""


class Deployed:
    """One app on the shared Ray; `close()` removes it."""

    def __init__(self, side: str, workload: str, port: int) -> None:
        from ray import serve

        import servekit as sk
        from benchmarks.workloads import rayserve_apps, servekit_apps

        self.side = side
        self.path = RAY_PREFIX + "/" if side == "ray-serve" else "/"
        started = time.perf_counter()
        self._server: sk.Server | None = None
        if side == "ray-serve":
            serve.run(rayserve_apps.BUILDERS[workload](), name="bench", route_prefix=RAY_PREFIX)
        else:
            self._server = sk.serve(
                servekit_apps.BUILDERS[workload](), port=port, blocking=False, backend="ray"
            )
        self.deploy_s = time.perf_counter() - started
        self.first_200_s = _first_200(port, self.path, started)
        time.sleep(1.0)
        self.idle_rss_mb = tree_rss_mb(os.getpid())
        """Every process (driver, Ray, replicas of every app deployed), this app idle."""
        self.added_rss_mb = 0.0
        """What this app's deployment added to that (set by `measure`)."""

    def close(self) -> None:
        from ray import serve

        if self._server is not None:
            self._server.shutdown(grace_s=5)
        else:
            serve.delete("bench")


def _first_200(port: int, path: str, started: float, timeout_s: float = 120.0) -> float:
    while time.perf_counter() - started < timeout_s:
        try:
            status, _ = request(port, "POST", path, BODY, timeout=5)
        except OSError:
            status = None
        if status == 200:
            return time.perf_counter() - started
        time.sleep(0.01)
    raise RuntimeError(f"no 200 from POST {path} within {timeout_s} s")


def measure(workload: str, port: int, args: argparse.Namespace, script: Path) -> list[Row]:
    """Both apps of `workload` deployed side by side; wrk points interleaved between them.

    Each round runs every concurrency on both apps, one right after the other (which goes
    first alternates), so a slow moment of the machine hits both. CPU per request is the
    CPU of every process (driver, Ray, replicas) over the requests served.
    """
    print(f"== {workload}", file=sys.stderr, flush=True)
    apps = {}
    try:
        before = tree_rss_mb(os.getpid())
        for side in SIDES:  # one after the other, so each adds its own memory to the total
            app = apps[side] = Deployed(side, workload, port)
            app.added_rss_mb, before = app.idle_rss_mb - before, app.idle_rss_mb
        for app in apps.values():
            run_wrk(f"http://127.0.0.1:{port}{app.path}", script, max(args.concurrency), args.warmup)
        rows = []
        for index in range(args.rounds):
            for concurrency in args.concurrency:
                order = SIDES if (index + concurrency) % 2 == 0 else SIDES[::-1]
                for side in order:
                    rows.append(
                        _point(apps[side], workload, concurrency, port, args=args, script=script, index=index)
                    )
        return rows
    finally:
        for app in apps.values():
            app.close()
        time.sleep(1.0)


def _point(
    app: Deployed,
    workload: str,
    concurrency: int,
    port: int,
    *,
    args: argparse.Namespace,
    script: Path,
    index: int,
) -> Row:
    cpu_before = tree_cpu_s(os.getpid())
    result = run_wrk(f"http://127.0.0.1:{port}{app.path}", script, concurrency, args.duration, timeout_s=10)
    cpu_s = tree_cpu_s(os.getpid()) - cpu_before
    row = {"workload": workload, "side": app.side, "c": concurrency, "round": index, **result.to_dict()}
    row.update(
        deploy_s=app.deploy_s,
        first_200_s=app.first_200_s,
        idle_rss_mb=app.idle_rss_mb,
        added_rss_mb=app.added_rss_mb,
        cpu_ms_per_request=1000 * cpu_s / result.requests if result.requests else None,
    )
    cpu = row["cpu_ms_per_request"] or 0.0
    print(
        f"   {app.side:<9} c={concurrency:<3} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:8.2f} ms  CPU {cpu:6.2f} ms/req  errors {result.errors}",
        file=sys.stderr,
        flush=True,
    )
    return row


def local_runtime(log_dir: Path, runs: int = 3) -> Row:
    """The local runtime's W1 cold start (process start -> first 200) and idle RSS, for contrast."""
    starts, rss = [], []
    for _ in range(runs):
        with ServerProcess("servekit", "w1", log_dir, {}) as server:
            starts.append(server.wait_ready(BODY))
            time.sleep(1.0)
            rss.append(tree_rss_mb(server.pid))
    return {
        "cold_start_s": statistics.median(starts),
        "idle_rss_mb": statistics.median(rss),
        "samples_s": starts,
    }


def best(rows: list[Row]) -> list[Row]:
    """Per (workload, side, c): the round with the most req/s, with every round's req/s."""
    grouped: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row["workload"], row["side"], row["c"]), []).append(row)
    kept = []
    for samples in grouped.values():
        top = dict(max(samples, key=lambda row: row["rps"]))
        top["rps_samples"] = [round(row["rps"], 1) for row in samples]
        cpu = [row["cpu_ms_per_request"] for row in samples if row["cpu_ms_per_request"]]
        top["cpu_ms_per_request"] = statistics.median(cpu) if cpu else None
        kept.append(top)
    return kept


def paired(all_rounds: list[Row], workload: str, c: int) -> list[float]:
    """servekit / Ray Serve req/s of each round's two points at concurrency `c` (measured back to back)."""
    points = {
        (r["round"], r["side"]): r["rps"] for r in all_rounds if r["workload"] == workload and r["c"] == c
    }
    rounds = sorted({key[0] for key in points})
    return [
        points[(index, "servekit")] / points[(index, "ray-serve")]
        for index in rounds
        if points.get((index, "ray-serve")) and (index, "servekit") in points
    ]


def ratios(rows: list[Row], all_rounds: list[Row]) -> list[Row]:
    """servekit / Ray Serve per workload and concurrency: req/s (paired and best), latency, CPU."""
    index = {(r["workload"], r["side"], r["c"]): r for r in rows}
    out = []
    for (workload, side, c), theirs in index.items():
        if side != "ray-serve" or (workload, "servekit", c) not in index:
            continue
        ours = index[(workload, "servekit", c)]
        out.append(
            {
                "workload": workload,
                "c": c,
                "paired_rps_ratios": paired(all_rounds, workload, c),
                "paired_rps_ratio": statistics.median(paired(all_rounds, workload, c)),
                "rps_ratio": ours["rps"] / theirs["rps"] if theirs["rps"] else None,
                "p50_ratio": ours["p50_ms"] / theirs["p50_ms"] if theirs["p50_ms"] else None,
                "p99_ratio": ours["p99_ms"] / theirs["p99_ms"] if theirs["p99_ms"] else None,
                "cpu_ratio": ours["cpu_ms_per_request"] / theirs["cpu_ms_per_request"]
                if ours["cpu_ms_per_request"] and theirs["cpu_ms_per_request"]
                else None,
            }
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    """The report."""
    m = results["machine"]
    lines = [
        f"# servekit on Ray vs Ray Serve — {m['date']}, {m['host']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['ram_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"ray {results['ray_version']}, servekit {m['servekit']}, torch {m['torch']}, {m['wrk']}.",
        f"One local Ray with {RAY_CPUS} logical CPUs; both apps of a workload deployed side by side "
        f"(servekit at `/`, Ray Serve at `{RAY_PREFIX}/`), wrk (1 thread) points interleaved between "
        f"them; {results['settings']['warmup']} s warm-up, {results['settings']['duration']} s per point, "
        f"best of {results['settings']['rounds']} round(s) for req/s and latency, median for CPU per "
        "request (CPU of every process: driver, Ray, replicas).",
        "",
        "## Targets",
        "",
        "| target | measured | goal | result |",
        "|---|---|---|---|",
    ]
    for target in results["targets"]:
        verdict = "PASS" if target["met"] else "FAIL"
        lines.append(f"| {target['name']} | {target['measured']:.3f} | >= {TARGET_RATIO} | {verdict} |")
    titles = {"w1": "W1 echo", "w2": "W2 pipeline (3 deployments + ingress)"}
    for workload, title in titles.items():
        if not any(row["workload"] == workload for row in results["rows"]):
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| app | c | req/s | p50 ms | p99 ms | errors | rounds req/s | CPU ms/req |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in sorted(
            (r for r in results["rows"] if r["workload"] == workload), key=lambda r: (r["side"], r["c"])
        ):
            rounds = ", ".join(map(str, row["rps_samples"]))
            latency = f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f}"
            cpu = f"{row['cpu_ms_per_request']:.2f}" if row["cpu_ms_per_request"] else "—"
            lines.append(
                f"| {row['side']} | {row['c']} | {row['rps']:.1f} | {latency} | {row['errors']} "
                f"| {rounds} | {cpu} |"
            )
        lines += [
            "",
            "| c | req/s, paired rounds: median (range) | req/s, best rounds | p50 | p99 | CPU per request |",
            "|---|---|---|---|---|---|",
        ]
        for ratio in (r for r in results["ratios"] if r["workload"] == workload):
            paired = ratio["paired_rps_ratios"]
            spread = f"{ratio['paired_rps_ratio']:.3f} ({min(paired):.2f}-{max(paired):.2f})"
            keys = ("rps_ratio", "p50_ratio", "p99_ratio", "cpu_ratio")
            cells = " | ".join("—" if ratio[key] is None else f"{ratio[key]:.3f}" for key in keys)
            lines.append(f"| {ratio['c']} | {spread} | {cells} |")
        lines.append("")
        lines.append(
            "Ratios are servekit / Ray Serve. *Paired*: each round's servekit point over the Ray "
            "Serve point measured right next to it; *best*: best round over best round; CPU: "
            "median over rounds."
        )
    lines += ["", "## Cold start and memory", "", "| | time | idle memory (RSS) |"]
    lines.append("|---|---|---|")
    lines.append(
        f"| start Ray + Serve (ray.init, serve.start) | {results['ray_start_s']:.2f} s "
        f"| {results['ray_rss_mb']:.0f} MB: driver, Ray and Serve, no app |"
    )
    measured = sorted({row["workload"] for row in results["rows"]})
    for workload in measured:
        for side in SIDES:
            row = next(r for r in results["rows"] if r["workload"] == workload and r["side"] == side)
            lines.append(
                f"| {workload.upper()} {side}: deploy -> first 200 | {row['first_200_s']:.2f} s "
                f"| +{row['added_rss_mb']:.0f} MB for the app's replicas |"
            )
    local = results["local_runtime"]
    lines.append(
        f"| W1 on the local runtime: process start -> first 200 | {local['cold_start_s']:.2f} s "
        f"| {local['idle_rss_mb']:.0f} MB (one process) |"
    )
    if results.get("notes"):
        lines += ["", "## Notes", "", results["notes"]]
    return "\n".join(lines)


def targets(ratio_rows: list[Row]) -> list[Row]:
    """servekit at least `TARGET_RATIO` of Ray Serve's req/s at c=64: the median of paired rounds."""
    return [
        {
            "name": f"{ratio['workload'].upper()} c=64 servekit-on-Ray / Ray Serve req/s (paired median)",
            "measured": ratio["paired_rps_ratio"],
            "met": ratio["paired_rps_ratio"] >= TARGET_RATIO,
        }
        for ratio in ratio_rows
        if ratio["c"] == 64
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s warm-up, 3 s points")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--workloads", type=lambda text: text.split(","), default=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=None, help="results stem (without .md/.json)")
    parser.add_argument("--notes", type=Path, default=None, help="a Markdown file to add as Notes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 1.0, 3.0
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; returns the results document."""
    import ray
    from ray import serve

    wrk = ensure_wrk()
    log_dir = Path(tempfile.mkdtemp(prefix="servekit-ray-bench-"))
    script = write_lua_script(log_dir, BODY)
    local = local_runtime(log_dir)
    port = free_port()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    ray_start_s = time.perf_counter() - started
    time.sleep(2.0)
    ray_rss_mb = tree_rss_mb(os.getpid())
    rows: list[Row] = []
    try:
        for workload in args.workloads:
            rows += measure(workload, port, args, script)
    finally:
        serve.shutdown()
        ray.shutdown()
    kept = best(rows)
    ratio_rows = ratios(kept, rows)
    return {
        "command": "python -m benchmarks.ray_backend" + (" --quick" if args.quick else ""),
        "machine": machine.describe(wrk),
        "ray_version": ray.__version__,
        "settings": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds},
        "ray_start_s": ray_start_s,
        "ray_rss_mb": ray_rss_mb,
        "local_runtime": local,
        "rows": kept,
        "all_rounds": rows,
        "ratios": ratio_rows,
        "targets": targets(ratio_rows),
        "notes": args.notes.read_text() if args.notes else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    stem = (
        args.out
        or RESULTS / f"{dt.date.today().isoformat()}-{machine.host_tag()}-ray{'-quick' if args.quick else ''}"
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results) + "\n")
    print(f"wrote {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
