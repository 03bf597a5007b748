"""Soak: does the server's memory stay flat over a million requests?

    python -m benchmarks.soak                          # W1, 1,000,000 requests at c=16
    python -m benchmarks.soak --requests 20000         # smoke test (a few seconds)
    python -m benchmarks.soak --workloads w1,w2 --out benchmarks/results/2026-12-02-vm

In: the servekit app of each workload (``benchmarks/workloads/servekit_apps.py``), served by
``benchmarks.workloads.launch`` on 127.0.0.1. Out: a ``soak`` section merged into the
results file ``--out`` (default ``results/<date>-<host>``, the file a full
``benchmarks.run`` writes, so its report shows the soak beside the wrk tables).

wrk drives the server in windows of ``--sample-every`` seconds until ``--requests`` have
been served (or ``--max-seconds`` passed); after each window the RSS of the server process
tree is read with psutil. A least-squares line of RSS against requests served, over the
samples after the warm-up (``--warmup-fraction`` of the requests), gives the slope in bytes
per 1k requests; the target is flat (under 1 KiB per 10k requests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python benchmarks/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from benchmarks.harness import machine, results_file
from benchmarks.harness.server import ServerProcess
from benchmarks.harness.wrk import ensure_wrk, run_wrk, write_lua_script
from benchmarks.workloads import SAMPLE_X, TORCH_THREADS_ENV

WORKLOADS = ("w1", "w2", "w2-sync", "w3")
#: (requests served so far, RSS bytes, seconds since the load started)
Sample = tuple[int, int, float]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="servekit memory soak (wrk, RSS slope)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--requests", type=_positive_int, default=1_000_000, help="per workload")
    parser.add_argument(
        "--workloads", type=_workload_list, default=("w1",), help=f"comma-separated, of {list(WORKLOADS)}"
    )
    parser.add_argument("--concurrency", type=_positive_int, default=16, help="wrk connections")
    parser.add_argument("--stack", choices=("fast", "pure"), default="fast", help="event loop + HTTP parser")
    parser.add_argument("--sample-every", type=float, default=3.0, help="seconds of load between RSS samples")
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.1, help="share of the requests left out of the fit"
    )
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time bound per workload")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="results file stem")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.sample_every < 1:
        parser.error(f"--sample-every must be at least 1 (wrk runs whole seconds), got {args.sample_every}")
    return args


def _positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _workload_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(WORKLOADS)}")
    return names


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def slope_per_request(samples: Sequence[Sample]) -> float | None:
    """Least-squares slope of RSS (bytes) against requests served; None under 3 samples."""
    if len(samples) < 3:
        return None
    xs = [float(requests) for requests, _, _ in samples]
    ys = [float(rss) for _, rss, _ in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def _window_s(remaining: int, total: int, rate: float | None, sample_every: float) -> float:
    """The next wrk window: ``sample_every`` at most, short enough for ~10 samples per soak
    and for the requests that remain (wrk runs whole seconds, so 1 s at least)."""
    if not rate:
        return 1.0
    return max(1.0, min(sample_every, total / rate / 10, remaining / rate))


def soak(workload: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Serve one workload with servekit, drive ``args.requests`` through it, sample its RSS."""
    body = json.dumps({"x": SAMPLE_X})
    lua = write_lua_script(workdir, body)
    env = {TORCH_THREADS_ENV: str(args.torch_threads)}
    print(
        f"== soak {workload}: {args.requests:,} requests at c={args.concurrency}", file=sys.stderr, flush=True
    )
    with ServerProcess("servekit", workload, workdir, env, args.stack) as srv:
        srv.wait_ready(body)
        samples: list[Sample] = [(0, tree_rss_bytes(srv.pid), 0.0)]
        served = errors = 0
        started = time.perf_counter()
        while served < args.requests and time.perf_counter() - started < args.max_seconds:
            elapsed = time.perf_counter() - started
            rate = served / elapsed if served else None
            window = _window_s(args.requests - served, args.requests, rate, args.sample_every)
            result = run_wrk(srv.url, lua, args.concurrency, window)
            served, errors = served + result.requests, errors + result.errors
            samples.append((served, tree_rss_bytes(srv.pid), time.perf_counter() - started))
            print(
                f"   {served:>10,} requests  RSS {samples[-1][1] / 2**20:7.1f} MB",
                file=sys.stderr,
                flush=True,
            )
        seconds = time.perf_counter() - started
    return summarize(workload, args, samples, seconds, errors)


def summarize(
    workload: str, args: argparse.Namespace, samples: Sequence[Sample], seconds: float, errors: int
) -> dict[str, Any]:
    """One workload's soak row: totals, start/end RSS and the slope after warm-up."""
    served = samples[-1][0]
    fit_from = int(args.warmup_fraction * served)
    fitted = [sample for sample in samples if sample[0] >= fit_from]
    slope = slope_per_request(fitted)
    return {
        "workload": workload,
        "stack": args.stack,
        "concurrency": args.concurrency,
        "requests": served,
        "requested": args.requests,
        "seconds": seconds,
        "rps": served / seconds if seconds else None,
        "errors": errors,
        "start_rss_mb": samples[0][1] / 2**20,
        "end_rss_mb": samples[-1][1] / 2**20,
        "fit_from_requests": fit_from,
        "fit_samples": len(fitted),
        "slope_bytes_per_1k": None if slope is None else 1000 * slope,
        "samples": [list(sample) for sample in samples],
    }


def output_stem(args: argparse.Namespace) -> Path:
    """``--out``, or the file a full ``benchmarks.run`` writes today."""
    if args.out is not None:
        return Path(args.out)
    return results_file.RESULTS_DIR / f"{dt.date.today().isoformat()}-{machine.host_tag()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Soak every requested workload; merge the ``soak`` section into the results file."""
    args = parse_args(argv)
    ensure_wrk()
    command = "python -m benchmarks.soak " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="servekit-soak-") as tmp:
        runs = [soak(workload, args, Path(tmp)) for workload in args.workloads]
    section = {"command": command.strip(), "sample_every_s": args.sample_every, "runs": runs}
    json_path, md_path = results_file.merge_section(output_stem(args), "soak", section)
    for run in runs:
        slope = run["slope_bytes_per_1k"]
        shown = "n/a (too few samples)" if slope is None else f"{slope:.1f} bytes / 1k requests"
        print(
            f"{run['workload']}: {run['requests']:,} requests, RSS {run['start_rss_mb']:.1f} ->"
            f" {run['end_rss_mb']:.1f} MB, slope after warm-up {shown}",
            file=sys.stderr,
        )
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
