"""The cost of one handle hop: in-process vs a process replica.

    python -m benchmarks.hops                  # ~20 s
    python -m benchmarks.hops --calls 2000 --rounds 1

An in-process ingress (``HopIngress``, started with ``sk.run``: no HTTP) calls
``await handle.echo(x)`` on a trivial ``HopEcho`` deployment that runs (a) in the
same process, (b) as a process replica (``isolation="process"``).  The timing loop
runs inside the ingress, on servekit's event loop: each sample is
``perf_counter_ns`` around one ``await self.echo.echo(x)``, sequential, after a
warm-up.  Payloads: one int, a 16-float list, a 1 MiB numpy array.  Also measured:
throughput with 64 hops in flight, two floors without servekit (a blocking socket-pair
round trip, and a minimal asyncio + pickle-5 RPC between two processes), and the same RPC
framed by servekit's worker codec alone (no runtime, handles or worker dispatch), which
splits the hop's cost between the transport and the layers above it.

The section is merged into ``--out`` (default ``results/<date>-<host>-process``):
``.json`` keeps every statistic, ``.md`` is re-rendered.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python benchmarks/hops.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import servekit as sk
from benchmarks.harness import pingpong, results_file
from benchmarks.harness.cpuwatch import CpuWatch, describe, proc_cpu_s
from benchmarks.harness.process_report import hops_section
from benchmarks.workloads import SAMPLE_X
from benchmarks.workloads.process_apps import PAYLOADS, build_hops

ISOLATIONS = ("in_process", "process")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="cost of one servekit handle hop, in-process vs process replica",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=5000, help="timed sequential calls per round")
    parser.add_argument("--big-calls", type=int, default=1000, help="same, for the 1 MiB payload")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls before each round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, each in a fresh app / worker (samples pooled)"
    )
    parser.add_argument("--pipelined", type=int, default=20000, help="calls for the in-flight test")
    parser.add_argument("--in-flight", type=int, default=64, help="hops outstanding at once")
    parser.add_argument("--no-floors", action="store_true", help="skip the servekit-less floors")
    parser.add_argument("--out", type=Path, default=None, help="results file stem to merge into")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def summarize(samples_ns: Sequence[int], rounds: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """Median, percentiles, mean and extremes in µs (+ each round's median)."""
    ordered = sorted(samples_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e3

    out: dict[str, Any] = {
        "calls": len(ordered),
        "median_us": statistics.median(ordered) / 1e3,
        "p90_us": pct(90),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "mean_us": statistics.fmean(ordered) / 1e3,
        "min_us": ordered[0] / 1e3,
        "max_us": ordered[-1] / 1e3,
    }
    if len(rounds) > 1:
        out["round_medians_us"] = [statistics.median(r) / 1e3 for r in rounds]
    return out


def measure_servekit(isolation: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every payload, ``--rounds`` times, each round in a freshly started app.

    A fresh app per round (new worker process), so the rounds sample different workers and
    moments: on a shared VM the hop time shifts over time by tens of µs.
    """
    print(f"== hop: echo {isolation}", file=sys.stderr, flush=True)
    samples: dict[str, list[list[int]]] = {kind: [] for kind in PAYLOADS}
    cpu: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PAYLOADS}
    rates: list[float] = []
    out: dict[str, Any] = {"pids": []}
    with CpuWatch() as watch:
        for _ in range(args.rounds):
            with sk.run(build_hops(isolation)) as ingress:
                pids = ingress.where().result()
                out["pids"].append(pids)
                for kind in PAYLOADS:
                    calls = args.big_calls if kind == "numpy1mb" else args.calls
                    ingress.sequential(kind, args.warmup, 0).result()
                    counter = HopCpu(pids, calls)
                    samples[kind].append(ingress.sequential(kind, calls, 0).result())
                    cpu[kind].append(counter.per_hop_us())
                seconds = ingress.pipelined("int", args.pipelined, args.in_flight).result()
                rates.append(args.pipelined / seconds)
    for kind in PAYLOADS:
        rounds = samples[kind]
        out[kind] = {**summarize([s for r in rounds for s in r], rounds), **_mean(cpu[kind])}
        _print(f"{isolation} {kind}", out[kind])
    rate = statistics.median(rates)
    out["pipelined_int"] = {
        "calls": args.pipelined,
        "in_flight": args.in_flight,
        "calls_per_s": rate,
        "calls_per_s_rounds": rates,
        "us_per_call": 1e6 / rate,
    }
    print(f"   {isolation} {args.in_flight} in flight: {rate:.0f} hops/s", file=sys.stderr, flush=True)
    out["cpu"] = watch.result
    print(f"   {describe(watch.result)}", file=sys.stderr, flush=True)
    return out


def measure_floors(args: argparse.Namespace) -> dict[str, Any]:
    """The servekit-less references (see :mod:`benchmarks.harness.pingpong`)."""
    print("== hop floors without servekit", file=sys.stderr, flush=True)
    with CpuWatch() as watch:
        blocking = [pingpong.blocking_samples(args.calls, args.warmup) for _ in range(args.rounds)]
        rpc = [pingpong.asyncio_samples(SAMPLE_X, args.calls, args.warmup) for _ in range(args.rounds)]
        framed = [
            pingpong.asyncio_samples(SAMPLE_X, args.calls, args.warmup, mode="codec")
            for _ in range(args.rounds)
        ]
    out = {
        "blocking_8_bytes": {**summarize(*_pool(blocking)), **_mean([r[1] for r in blocking])},
        "asyncio_pickle_floats16": {**summarize(*_pool(rpc)), **_mean([r[1] for r in rpc])},
        "servekit_codec_floats16": {**summarize(*_pool(framed)), **_mean([r[1] for r in framed])},
        "cpu": watch.result,
    }
    _print("floor blocking 8 B", out["blocking_8_bytes"])
    _print("floor asyncio+pickle floats16", out["asyncio_pickle_floats16"])
    _print("servekit codec only, floats16", out["servekit_codec_floats16"])
    return out


def _mean(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Key-wise mean of per-round dicts (None stays None)."""
    return {
        key: None if rows[0][key] is None else statistics.fmean(row[key] for row in rows) for key in rows[0]
    }


def _pool(rounds: Sequence[tuple[list[int], Any]]) -> tuple[list[int], list[list[int]]]:
    samples = [r[0] for r in rounds]
    return [s for r in samples for s in r], samples


class HopCpu:
    """CPU time of the ingress's process and of the echo replica's process over ``hops`` calls.

    For an in-process echo both are this process (the caller column is then the whole hop).
    """

    def __init__(self, pids: dict[str, int], hops: int) -> None:
        """Start counting."""
        self.pids, self.hops = pids, hops
        self.separate = pids["echo"] != pids["ingress"]
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        callee = proc_cpu_s(self.pids["echo"]) if self.separate else 0.0
        return proc_cpu_s(self.pids["ingress"]), callee

    def per_hop_us(self) -> dict[str, float | None]:
        """CPU µs per hop on each side, from the start until now."""
        end = self._now()
        return {
            "caller_cpu_us_per_hop": (end[0] - self.start[0]) / self.hops * 1e6,
            "callee_cpu_us_per_hop": (end[1] - self.start[1]) / self.hops * 1e6 if self.separate else None,
        }


def _print(name: str, stats: dict[str, Any]) -> None:
    print(
        f"   {name:<28} median {stats['median_us']:8.1f} µs  p99 {stats['p99_us']:8.1f} µs"
        f"  ({stats['calls']} calls)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the section, merge it into the results file."""
    args = parse_args(argv)
    command = "python -m benchmarks.hops " + shlex.join(sys.argv[1:] if argv is None else argv)
    section: dict[str, Any] = {
        "command": command.strip(),
        "settings": {
            "calls": args.calls,
            "big_calls": args.big_calls,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "pipelined": args.pipelined,
            "in_flight": args.in_flight,
            "payloads": PAYLOADS,
        },
        "servekit": {isolation: measure_servekit(isolation, args) for isolation in ISOLATIONS},
    }
    if not args.no_floors:
        section["floors"] = measure_floors(args)
    print("\n".join(hops_section(section)))
    if not args.no_write:
        stem = args.out if args.out is not None else results_file.default_stem()
        json_path, md_path = results_file.merge_section(Path(stem), "hops", section)
        print(f"\nwrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
