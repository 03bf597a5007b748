"""`servekit batch TARGET --input FILE --output FILE`: score a file with an app (batch scoring)."""

from __future__ import annotations

import argparse
import sys

from servekit._cli.target import TargetError, load_app
from servekit.errors import ServekitError


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `batch` command to the `servekit` parser."""
    batch = commands.add_parser("batch", help="score every row of a file with an app (offline)")
    batch.add_argument("target", help="the app: pkg.module:app or path/to/file.py:app")
    batch.add_argument("--input", required=True, help="rows to score: .jsonl, .csv or .parquet")
    batch.add_argument("--output", required=True, help="where results go: .jsonl or .parquet")
    which = batch.add_mutually_exclusive_group()
    which.add_argument("--endpoint", default=None, help="the ingress endpoint to call, like /score")
    which.add_argument("--method", default=None, help="the ingress method to call, by name")
    batch.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=FIELD",
        help="pass input COLUMN as the method's FIELD (repeatable); other columns keep their names",
    )
    batch.add_argument(
        "--replicas", type=int, default=1, help="replicas of each deployment (processes if > 1)"
    )
    batch.add_argument("--batch-size", type=int, default=32, help="rows in flight per replica (x2)")
    batch.add_argument("--chunk-rows", type=int, default=4096, help="rows per checkpointed chunk")
    batch.add_argument("--max-failures", type=int, default=100, help="stop after more failed rows than this")
    batch.add_argument("--resume", action="store_true", help="finish an interrupted run from its checkpoint")
    batch.add_argument("--overwrite", action="store_true", help="replace an existing output")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="local runtime or Ray Data"
    )
    batch.add_argument("--address", default=None, help="with --backend ray: the cluster (auto, host:port)")
    batch.add_argument("--gpus", default=None, help="GPU ids to plan with, like 0,1 ('' for none)")


def run(args: argparse.Namespace) -> int:
    """Run `servekit batch`; returns the exit code."""
    from servekit._runtime.batch.calls import parse_mapping  # noqa: PLC0415 (keeps --version fast)
    from servekit._runtime.batch.runner import batch_score  # noqa: PLC0415

    try:
        report = batch_score(
            load_app(args.target),
            args.input,
            args.output,
            endpoint=args.endpoint,
            method=args.method,
            mapping=parse_mapping(args.map),
            replicas=args.replicas,
            batch_size=args.batch_size,
            chunk_rows=args.chunk_rows,
            max_failures=args.max_failures,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            backend=args.backend,
            address=args.address,
            gpus=args.gpus,
        )
    except (TargetError, ServekitError, OSError, ImportError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unreadable input (pyarrow's errors), say: one line, no traceback
        print(f"servekit: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nservekit: interrupted; finished chunks are kept: run again with --resume", file=sys.stderr)
        return 130
    resumed = f", {report.chunks_skipped} chunks already done" if report.chunks_skipped else ""
    print(
        f"servekit: scored {report.rows} rows in {report.seconds:.1f} s: {report.succeeded} to "
        f"{report.output}, {report.failed} failed (see {report.errors}){resumed}",
        file=sys.stderr,
    )
    return 0
