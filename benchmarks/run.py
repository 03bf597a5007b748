"""Run the servekit benchmarks against the plain-Starlette floor and write a report.

    python -m benchmarks.run            # full run: 3 s warm-up + 10 s measured per point
    python -m benchmarks.run --quick    # ~2 s per point, for a smoke test

For each workload and server it starts the server in a subprocess on
127.0.0.1 (uvicorn, one worker, uvloop + httptools, no access log; the ``-pure``
workloads run both servers on asyncio + h11), waits for readiness, and drives it with
``wrk`` (1 thread, connections = concurrency) at concurrency 1, 16 and 64.  It also
measures W1 cold start and idle RSS, the W3 model's batch-1 vs batch-32 cost, and how
long ``sk.run`` of examples/classifier takes beyond ``import torch``.  Results go to
``benchmarks/results/<date>-<host>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench, machine, report, results_file
from benchmarks.harness.wrk import ensure_wrk, write_lua_script
from benchmarks.workloads import SAMPLE_X

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: W1-W3 on the fast stack (uvloop + httptools), the same on the pure stack (asyncio + h11),
#: and the process-replica variants.
WORKLOADS = ("W1", "W2", "W3", "W1-pure", "W2-pure", "W3-pure", "W2P", "W3P")
#: What runs without --workloads: the process-replica variants (W2P, W3P) are opt-in.
DEFAULT_WORKLOADS = ("W1", "W2", "W3", "W1-pure", "W2-pure", "W3-pure")
SERVERS = ("baseline", "servekit")

FAST_CASES: tuple[bench.Case, ...] = (
    bench.Case("W1", "Starlette", "baseline", "w1", "baseline"),
    bench.Case("W1", "servekit", "servekit", "w1", "servekit"),
    bench.Case("W2", "Starlette (one function)", "baseline", "w2", "baseline"),
    bench.Case("W2", "servekit (3 async deployments + ingress)", "servekit", "w2", "servekit"),
    bench.Case("W2", "servekit (3 sync def deployments + ingress)", "servekit", "w2-sync",
               "servekit-sync"),
    bench.Case("W3", "Starlette, no batching", "baseline", "w3", "reference"),
    bench.Case("W3", "Starlette + hand-rolled batcher", "baseline", "w3-batched", "baseline",
               "/stats"),
    bench.Case("W3", "servekit @sk.batch", "servekit", "w3", "servekit", "/-/status"),
)  # fmt: skip
#: The same cases with both servers on asyncio's loop and h11 (a default install without
#: uvloop/httptools), workloads named ``W1-pure`` ...: compared within the same stack.
PURE_CASES = tuple(replace(case, workload=f"{case.workload}-pure", stack="pure") for case in FAST_CASES)
PROCESS_CASES: tuple[bench.Case, ...] = (
    bench.Case("W2P", "servekit, 3 stages as process replicas", "servekit", "w2-process", "servekit"),
    bench.Case("W3P", "servekit @sk.batch, model as 2 process replicas", "servekit", "w3-process",
               "servekit", "/-/status"),
)  # fmt: skip
CASES = FAST_CASES + PURE_CASES + PROCESS_CASES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="servekit vs Starlette benchmarks (wrk)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 s warm-up, 2 s measured, 1 round (smoke test)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per point")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument(
        "--concurrency", type=_int_list, default=(1, 16, 64), help="comma-separated, e.g. 1,16,64"
    )
    parser.add_argument(
        "--workloads",
        type=_name_list(WORKLOADS),
        default=DEFAULT_WORKLOADS,
        help="e.g. W1,W3,W1-pure; W2P/W3P (process replicas) are compared with W2/W3 of the same run",
    )
    parser.add_argument(
        "--servers", type=_name_list(SERVERS), default=SERVERS, help="baseline and/or servekit"
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="same for both servers")
    parser.add_argument("--wrk-timeout", type=float, default=5.0, help="wrk per-request timeout")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="interleaved rounds per point, best kept (None = 2, or 1 with --quick)",
    )
    parser.add_argument("--cold-starts", type=int, default=3, help="W1 cold starts per server")
    parser.add_argument("--no-extras", action="store_true", help="only the wrk measurements")
    parser.add_argument("--out", type=Path, default=None, help="results file stem")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 1.0, 2.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    return args


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _name_list(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        lookup = {name.lower(): name for name in allowed}
        unknown = [name for name in names if name.lower() not in lookup]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(allowed)}")
        return tuple(lookup[name.lower()] for name in names)

    return parse


def selected_cases(args: argparse.Namespace) -> list[bench.Case]:
    """The cases matching ``--workloads`` and ``--servers``."""
    return [c for c in CASES if c.workload in args.workloads and c.server in args.servers]


def make_settings(args: argparse.Namespace, workdir: Path) -> bench.Settings:
    """Build the measurement settings (writes the wrk Lua script into ``workdir``)."""
    body = json.dumps({"x": SAMPLE_X})
    (workdir / "logs").mkdir()
    return bench.Settings(
        warmup_s=args.warmup,
        duration_s=args.duration,
        concurrency=tuple(args.concurrency),
        torch_threads=args.torch_threads,
        wrk_timeout_s=args.wrk_timeout,
        cold_starts=args.cold_starts,
        body=body,
        lua_script=write_lua_script(workdir, body),
        log_dir=workdir / "logs",
        repeat=args.repeat,
    )


def settings_dict(settings: bench.Settings, quick: bool) -> dict[str, Any]:
    """The JSON-relevant part of the settings."""
    return {
        "quick": quick,
        "warmup_s": settings.warmup_s,
        "duration_s": settings.duration_s,
        "concurrency": list(settings.concurrency),
        "torch_threads": settings.torch_threads,
        "wrk_threads": 1,
        "wrk_timeout_s": settings.wrk_timeout_s,
        "repeat": settings.repeat,
        "body": settings.body,
    }


def measure_extras(args: argparse.Namespace, settings: bench.Settings) -> dict[str, Any]:
    """Model capacity, cold starts and the classifier example (unless ``--no-extras``)."""
    if args.no_extras:
        return {}
    extras: dict[str, Any] = {"capacity": bench.model_capacity(settings)}
    if "W1" in args.workloads:
        extras["startup"] = [bench.cold_start(server, settings) for server in args.servers]
    if "servekit" in args.servers:
        extras["classifier"] = bench.classifier_ready(settings)
    return extras


def output_stem(args: argparse.Namespace) -> Path:
    """``results/<date>-<host>[-quick]`` unless ``--out`` is given."""
    if args.out is not None:
        return Path(args.out)
    suffix = "-quick" if args.quick else ""
    return RESULTS_DIR / f"{dt.date.today().isoformat()}-{machine.host_tag()}{suffix}"


def write_results(results: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (raw numbers) and ``<stem>.md`` (report).

    Sections that ``benchmarks.hops`` / ``benchmarks.step_load`` already wrote to the
    same stem are kept (and reported), so the three commands can share one ``--out``.
    """
    results.update(results_file.keep_sections(results, stem))
    return results_file.write(results, stem)


def main(argv: Sequence[str] | None = None) -> int:
    """Run everything; return the process exit code (0 even when targets fail)."""
    args = parse_args(argv)
    wrk = ensure_wrk()
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="servekit-bench-") as tmp:
        settings = make_settings(args, Path(tmp))
        results: dict[str, Any] = {
            "command": command.strip(),
            "machine": machine.describe(wrk),
            "settings": settings_dict(settings, args.quick),
            "runs": bench.run_cases(selected_cases(args), settings),
        }
        results.update(measure_extras(args, settings))
    top = max(settings.concurrency)
    results["w3_ceiling"] = report.w3_ceiling(results, top)
    results["targets"] = report.targets(results)
    json_path, md_path = write_results(results, output_stem(args))
    print(report.markdown(results))
    print(f"\nwrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
