"""`servekit bench` against wrk on W1, in one run: is servekit's load generator the bottleneck,
and do its percentiles agree with wrk's?

    python -m benchmarks.bench_vs_wrk                                   # ~5 min
    python -m benchmarks.bench_vs_wrk --duration 3 --rounds 1 --quick   # smoke test (~30 s)
    python -m benchmarks.bench_vs_wrk --out benchmarks/results/$(date +%F)-vm-bench-vs-wrk

W1 (the echo deployment, `benchmarks/workloads/servekit_apps.py`) is served by servekit on the
fast stack, in its own process. In alternating rounds against that one server:

* **closed loop, c=64**: wrk (`-t1 -c64`) and `servekit bench --concurrency 64` with one and with
  `--processes` load processes. Target: servekit bench reaches at least half of wrk's req/s.
* **one request at a time** (c=1, rounds alternating who goes first): what each tool adds to
  a lone request's measured latency, with no arrival process in the way.
* **fixed rate**: wrk 4 has no rate option, so each of its `--rate-connections` connections
  waits a random `delay()` (exponential, in whole ms, Lua) after each response, which paces
  wrk to about `--rate` requests/s arriving at random times (fixed delays would make the
  connections fire in bursts); then `servekit bench --rate R --arrival poisson` at the rate wrk
  achieved, on as many connections. Both measure each request from its send to its response
  on a lightly loaded server, so their p50/p90/p99 should agree: target within 10%.

Figures are medians over rounds. Results go to `--out` (`.json` + `.md`), by default
`benchmarks/results/<date>-<host>-bench-vs-wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python benchmarks/bench_vs_wrk.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine
from benchmarks.harness.results_file import default_stem
from benchmarks.harness.server import REPO_ROOT, ServerProcess
from benchmarks.harness.wrk import MARKER, ensure_wrk, parse_output, write_lua_script
from benchmarks.workloads import SAMPLE_X

BODY = json.dumps({"x": SAMPLE_X}, separators=(",", ":"))
PERCENTILES = ("p50", "p90", "p99")
THROUGHPUT_TARGET = 0.5
AGREEMENT_TARGET = 0.10

_PACED_LUA = """
math.randomseed(7)
delay = function()
  return math.floor(-math.log(1 - math.random()) * __DELAY_MS__ + 0.5)
end
"""


def paced_script(directory: Path, body: str, delay_ms: float) -> Path:
    """wrk's POST script plus a `delay()` that waits a random time averaging `delay_ms` (exponential)
    before each request of a connection."""
    base = write_lua_script(directory, body)
    paced = directory / "paced.lua"
    paced.write_text(base.read_text() + _PACED_LUA.replace("__DELAY_MS__", f"{delay_ms:g}"))
    return paced


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration_s: float) -> dict[str, Any]:
    """One wrk run (one thread): requests/s and p50/p90/p99/max in ms."""
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout=10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0 or MARKER not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_output(done.stdout, connections, 0.0)
    return {
        "rps": result.rps,
        "requests": result.requests,
        "errors": result.errors,
        "p50": result.p50_ms,
        "p90": result.p90_ms,
        "p99": result.p99_ms,
        "max": result.max_ms,
    }


def run_bench(
    url: str, load: Sequence[str], duration_s: float, warmup_s: float, processes: int
) -> dict[str, Any]:
    """One `servekit bench` run (a subprocess): requests/s and p50/p90/p99/max in ms."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bench.json"
        command = [
            sys.executable,
            "-m",
            "servekit",
            "bench",
            url,
            "--json",
            BODY,
            *load,
            "--duration",
            str(duration_s),
            "--warmup",
            str(warmup_s),
            "--processes",
            str(processes),
            "--quiet",
            "--out",
            str(out),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s * 3 + 120, env=env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"servekit bench failed ({done.returncode}): {done.stderr}")
        phase = json.loads(out.read_text())["phases"][0]
    latency = phase["latency_ms"]
    return {
        "rps": phase["rps"],
        "requests": phase["requests"],
        "errors": phase["errors"],
        "unsent": phase["unsent"],
        **{key: latency[key] for key in (*PERCENTILES, "max")},
        "send_lag_p99": (phase.get("send_lag_ms") or {}).get("p99"),
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds if r.get(key) is not None))


def closed_loop(args: argparse.Namespace, wrk: str, url: str, script: Path) -> dict[str, Any]:
    """wrk and servekit bench (1 and N processes) at c=`args.concurrency`, in alternating rounds."""
    rounds: dict[str, list[dict[str, Any]]] = {"wrk": [], "bench-1": [], f"bench-{args.processes}": []}
    load = ("--concurrency", str(args.concurrency))
    for number in range(args.rounds):
        print(f"closed loop, round {number + 1}/{args.rounds}", file=sys.stderr)
        rounds["wrk"].append(run_wrk(wrk, url, script, args.concurrency, args.duration))
        rounds["bench-1"].append(run_bench(url, load, args.duration, args.warmup, 1))
        if args.processes > 1:
            rounds[f"bench-{args.processes}"].append(
                run_bench(url, load, args.duration, args.warmup, args.processes)
            )
    rounds = {name: found for name, found in rounds.items() if found}
    medians = {
        name: {key: _median(found, key) for key in ("rps", *PERCENTILES, "max")}
        for name, found in rounds.items()
    }
    best = max((name for name in medians if name != "wrk"), key=lambda name: medians[name]["rps"])
    return {
        "concurrency": args.concurrency,
        "rounds": rounds,
        "medians": medians,
        "best_bench": best,
        "ratio": medians[best]["rps"] / medians["wrk"]["rps"],
    }


def one_at_a_time(args: argparse.Namespace, wrk: str, url: str, script: Path) -> dict[str, Any]:
    """wrk and servekit bench with one request in flight (c=1): what each adds to a lone request's
    measured latency, without any arrival process in the way. Rounds alternate who goes first."""
    rounds: dict[str, list[dict[str, Any]]] = {"wrk": [], "bench": []}
    for number in range(args.rounds):
        print(f"one at a time, round {number + 1}/{args.rounds}", file=sys.stderr)
        order = ("wrk", "bench") if number % 2 == 0 else ("bench", "wrk")
        for name in order:
            if name == "wrk":
                rounds["wrk"].append(run_wrk(wrk, url, script, 1, args.duration))
            else:
                rounds["bench"].append(run_bench(url, ("--concurrency", "1"), args.duration, args.warmup, 1))
    return _agreement(rounds)


def _agreement(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    medians = {
        name: {key: _median(found, key) for key in ("rps", *PERCENTILES, "max")}
        for name, found in rounds.items()
    }
    differences = {
        key: medians["bench"][key] / medians["wrk"][key] - 1 for key in PERCENTILES if medians["wrk"][key]
    }
    return {"rounds": rounds, "medians": medians, "differences": differences}


def fixed_rate(args: argparse.Namespace, wrk: str, url: str, directory: Path) -> dict[str, Any]:
    """wrk paced by delay() to about `args.rate`, then servekit bench open-loop at the rate wrk reached."""
    delay_ms = args.rate_connections * 1000 / args.rate
    script = paced_script(directory, BODY, delay_ms)
    rounds: dict[str, list[dict[str, Any]]] = {"wrk": [], "bench": []}
    for number in range(args.rounds):
        print(f"fixed rate, round {number + 1}/{args.rounds}", file=sys.stderr)
        paced = run_wrk(wrk, url, script, args.rate_connections, args.duration)
        rounds["wrk"].append(paced)
        load = (
            *("--rate", f"{paced['rps']:.1f}", "--connections", str(args.rate_connections)),
            *("--arrival", "poisson"),
        )
        rounds["bench"].append(run_bench(url, load, args.duration, args.warmup, 1))
    return {
        "target_rate": args.rate,
        "connections": args.rate_connections,
        "wrk_delay_ms": delay_ms,
        **_agreement(rounds),
    }


def _row(label: str, row: dict[str, float]) -> str:
    latencies = " | ".join(f"{row[key]:.2f}" for key in (*PERCENTILES, "max"))
    return f"| {label} | {row['rps']:.0f} | {latencies} |"


def _one_at_a_time_lines(single: dict[str, Any] | None) -> list[str]:
    if single is None:
        return []
    lines = [
        "## One request at a time (c=1)",
        "",
        "| load generator | requests/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        _row("wrk -t1 -c1", single["medians"]["wrk"]),
        _row("servekit bench --concurrency 1", single["medians"]["bench"]),
    ]
    shown = ", ".join(f"{key} {value:+.1%}" for key, value in single["differences"].items())
    return [*lines, "", f"- servekit bench vs wrk: {shown} (what each adds to a lone request).", ""]


def render(found: dict[str, Any]) -> str:
    """The markdown report."""
    info = found["machine"]
    closed, paced, settings = found["closed_loop"], found["fixed_rate"], found["settings"]
    lines = [
        "# `servekit bench` against wrk on W1",
        "",
        f"{info['date']}, {info['cpu']} ({info['nproc']} CPUs), Python {info['python']}, {info['wrk']}; "
        f"{settings['duration_s']:g} s per run, {settings['rounds']} alternating rounds, medians.",
        "",
        f"## Closed loop, c={closed['concurrency']}",
        "",
        "| load generator | requests/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in closed["medians"].items():
        label = "wrk -t1" if name == "wrk" else f"servekit bench --processes {name.split('-')[1]}"
        lines.append(_row(label, row))
    verdict = "met" if closed["ratio"] >= THROUGHPUT_TARGET else "missed"
    lines += [
        "",
        f"- servekit bench / wrk requests/s: **{closed['ratio']:.3f}** (best of servekit bench's settings; "
        f"target at least {THROUGHPUT_TARGET}): {verdict}.",
        "",
        *_one_at_a_time_lines(found.get("one_at_a_time")),
        f"## Fixed rate, about {paced['target_rate']:g} requests/s on {paced['connections']} connections",
        "",
        "| load generator | requests/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in paced["medians"].items():
        label = (
            f"wrk, random delay() averaging {paced['wrk_delay_ms']:g} ms"
            if name == "wrk"
            else "servekit bench --rate (wrk's rate) --arrival poisson"
        )
        lines.append(_row(label, row))
    worst = max((abs(d) for d in paced["differences"].values()), default=0.0)
    verdict = "met" if worst <= AGREEMENT_TARGET else "missed"
    shown = ", ".join(f"{key} {value:+.1%}" for key, value in paced["differences"].items())
    lines += [
        "",
        f"- servekit bench vs wrk: {shown}; largest **{worst:.1%}** "
        f"(target within {AGREEMENT_TARGET:.0%}): {verdict}.",
    ]
    if found.get("notes"):
        lines += ["", found["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="servekit bench's warm-up (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop connections (default 64)")
    parser.add_argument(
        "--processes", type=int, default=2, help="servekit bench's second setting (default 2)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate, requests/s (default 1000)")
    parser.add_argument("--rate-connections", type=int, default=20, help="connections at the fixed rate")
    parser.add_argument("--quick", action="store_true", help="write the results with a -quick suffix")
    parser.add_argument("--notes", default=None, help="markdown to put under the tables")
    parser.add_argument(
        "--out", default=None, help="results stem (default results/<date>-<host>-bench-vs-wrk)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both comparisons against one W1 server and write the results."""
    args = parse_args(argv)
    wrk = ensure_wrk()
    stem = Path(args.out) if args.out else default_stem("bench-vs-wrk" + ("-quick" if args.quick else ""))
    with tempfile.TemporaryDirectory() as folder, ServerProcess("servekit", "w1", Path(folder), {}) as server:
        server.wait_ready(BODY)
        script = write_lua_script(Path(folder), BODY)
        found: dict[str, Any] = {
            "machine": machine.describe(wrk),
            "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds},
            "closed_loop": closed_loop(args, wrk, server.url, script),
            "one_at_a_time": one_at_a_time(args, wrk, server.url, script),
            "fixed_rate": fixed_rate(args, wrk, server.url, Path(folder)),
        }
    if args.notes:
        found["notes"] = args.notes
    report = render(found)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(found, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {stem}.md and {stem}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
