"""`servekit bench TARGET`: load-test a URL or an app (which it starts and stops), closed-loop
concurrency sweeps or open-loop constant rates; `servekit bench --compare A.json B.json`.

Arguments in; the results table on stdout, `--out` JSON and `--plot` HTML files, and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from servekit._bench import payload as payloads
from servekit._bench import report
from servekit._bench.load import BenchError, PhasePlan
from servekit._bench.schedule import ARRIVALS, split_evenly

DEFAULT_CONNECTIONS_OPEN = 64


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` command to the `servekit` parser."""
    bench = commands.add_parser(
        "bench",
        help="load-test a URL or an app: req/s and latency percentiles",
        description="Load-test a URL or an app: closed-loop concurrency sweeps (--concurrency) or "
        "open-loop constant rates (--rate), with latency percentiles and errors by status.",
    )
    bench.add_argument(
        "target",
        nargs="?",
        help="a URL (http://127.0.0.1:8000/predict), or an app to start and stop: pkg.module:app, "
        "path/to/file.py:app, or a bundle",
    )
    _add_load_options(bench)
    _add_payload_options(bench)
    _add_output_options(bench)


def _add_load_options(bench: argparse.ArgumentParser) -> None:
    load = bench.add_argument_group("load")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument(
        "--concurrency",
        default="16",
        help="closed loop: requests in flight, one phase per value, like 1,16,64 (default 16)",
    )
    shape.add_argument(
        "--rate", default=None, help="open loop: requests per second, one phase per value, like 500,1000"
    )
    load.add_argument(
        "--connections",
        type=int,
        default=None,
        help=f"open loop: connections to send on (default {DEFAULT_CONNECTIONS_OPEN}); a request due "
        "while all are busy waits, and its latency counts from when it was due",
    )
    load.add_argument(
        "--arrival",
        choices=ARRIVALS,
        default="constant",
        help="open loop: requests evenly spaced (constant, default) or at random times (poisson)",
    )
    load.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    load.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each phase (default 2)"
    )
    load.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (default 30)")
    load.add_argument("--processes", type=int, default=1, help="load generator processes (default 1)")
    load.add_argument("--insecure", action="store_true", help="https: do not verify the certificate")
    load.add_argument(
        "--serve-args",
        default="",
        help="with an app target: more `servekit serve` flags, like '--isolation process'",
    )
    load.add_argument(
        "--start-timeout", type=float, default=120.0, help="with an app target: seconds it may take to start"
    )


def _add_payload_options(bench: argparse.ArgumentParser) -> None:
    request = bench.add_argument_group("request")
    request.add_argument("--path", default=None, help="with an app target: the path to load (default /)")
    request.add_argument("--method", default=None, help="HTTP method (default POST with a body, else GET)")
    request.add_argument(
        "-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a header (repeatable)"
    )
    body = request.add_mutually_exclusive_group()
    body.add_argument("--body", default=None, metavar="FILE", help="send this file's bytes as the body")
    body.add_argument("--json", default=None, metavar="JSON", help="send this JSON as the body")
    body.add_argument(
        "--template", choices=payloads.TEMPLATES, default=None, help="build an OIP or OpenAI request"
    )
    request.add_argument("--content-type", default=None, help="the body's type (default: application/json)")
    request.add_argument("--model", default=None, help="--template: the model name")
    request.add_argument("--shape", default=None, help="--template oip: the input shape, like 1,3")
    request.add_argument("--datatype", default=None, help="--template oip: the input datatype (default FP32)")
    request.add_argument("--input-name", default=None, help="--template oip: the input name (default INPUT0)")
    request.add_argument("--prompt", default="Say hello.", help="--template openai: the user message")
    request.add_argument(
        "--max-tokens", type=int, default=16, help="--template openai: max_tokens (default 16)"
    )
    request.add_argument(
        "--stream", action="store_true", help="--template openai: ask for a streamed response"
    )


def _add_output_options(bench: argparse.ArgumentParser) -> None:
    output = bench.add_argument_group("output")
    output.add_argument("--out", default=None, metavar="FILE.json", help="write every result as JSON")
    output.add_argument(
        "--plot", default=None, metavar="FILE.html", help="write a self-contained HTML report"
    )
    output.add_argument(
        "--compare",
        nargs=2,
        default=None,
        metavar=("A.json", "B.json"),
        help="compare two --out files (B over A) instead of running",
    )
    output.add_argument("--quiet", action="store_true", help="no progress display")


class UsageError(ValueError):
    """The flags do not make a run; the message says what to change."""


def run(args: argparse.Namespace) -> int:
    """Run `servekit bench`; returns the exit code."""
    try:
        if args.compare:
            print(report.compare(report.load(args.compare[0]), report.load(args.compare[1])))
            return 0
        _check(args)
        with _target_url(args) as base:
            target = _resolve_target(args, base)
            request = _request(args, target)
            results = _run_phases(args, target, request)
    except (UsageError, payloads.PayloadError, report.ResultsError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 2
    except (BenchError, OSError, RuntimeError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nservekit: interrupted", file=sys.stderr)
        return 130
    _write_outputs(args, results)
    return 0


def _check(args: argparse.Namespace) -> None:
    if not args.target:
        raise UsageError("give a target (a URL or pkg.module:app), or --compare A.json B.json")
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        raise UsageError("--duration and --timeout must be above 0, --warmup at least 0")
    if args.processes < 1:
        raise UsageError(f"--processes must be at least 1, not {args.processes}")
    if args.connections is not None and args.rate is None:
        raise UsageError("--connections is for open loop (--rate); with --concurrency, it is the connections")
    if args.method and args.method.upper() == "HEAD":
        raise UsageError("--method HEAD is not supported (its responses have no body); use GET")
    if args.template and not args.model:
        raise UsageError(f"--template {args.template} needs --model NAME")


def _levels(text: str, flag: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, like 1,16,64; not {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{flag} values must be above 0: {text!r}")
    return values


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


@contextlib.contextmanager
def _target_url(args: argparse.Namespace) -> Iterator[str]:
    """The URL to load: the target itself, or the base URL of the app started for the run."""
    if _is_url(args.target):
        if args.serve_args:
            raise UsageError("--serve-args is for an app target; the URL's server runs already")
        yield args.target
        return
    from servekit._cli.bench_server import served  # noqa: PLC0415

    print(f"servekit: starting {args.target} ...", file=sys.stderr)
    with served(args.target, args.serve_args, args.start_timeout) as url:
        print(f"servekit: {args.target} serves at {url}", file=sys.stderr)
        yield url


def _resolve_target(args: argparse.Namespace, url: str) -> payloads.Target:
    target = payloads.parse_target(url)
    if not _is_url(args.target):
        return target.with_path(args.path or _template_path(args) or "/")
    if args.path:
        raise UsageError("--path is for an app target; put the path in the URL")
    if target.path == "/" and args.template:
        return target.with_path(_template_path(args) or "/")
    return target


def _template_path(args: argparse.Namespace) -> str | None:
    if args.template == "oip":
        return payloads.oip_path(args.model)
    if args.template == "openai":
        return "/v1/chat/completions"
    return None


def _request(args: argparse.Namespace, target: payloads.Target) -> bytes:
    headers = [payloads.parse_header(text) for text in args.header]
    body: bytes | None = None
    if args.body is not None:
        try:
            body = Path(args.body).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --body {args.body!r}: {exc.strerror}") from None
    elif args.json is not None:
        body = payloads.json_body(args.json)
    elif args.template == "oip":
        body = payloads.oip_body(_oip_inputs(args, target))
    elif args.template == "openai":
        body = payloads.openai_body(args.model, args.prompt, args.max_tokens, args.stream)
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    content_type = args.content_type or ("application/json" if body is not None else None)
    return payloads.request_bytes(method, target, body, content_type, headers)


def _oip_inputs(args: argparse.Namespace, target: payloads.Target) -> list[payloads.TensorSpec]:
    """The model's inputs: from --input-name/--datatype/--shape, else from its metadata."""
    shape = payloads.parse_shape(args.shape) if args.shape else None
    if args.input_name is None:
        metadata = _oip_metadata(target, args.model)
        if metadata is not None:
            return payloads.oip_inputs_from_metadata(metadata, shape)
    return [payloads.TensorSpec(args.input_name or "INPUT0", (args.datatype or "FP32").upper(), shape or [1])]


def _oip_metadata(target: payloads.Target, model: str) -> dict[str, Any] | None:
    url = target.with_path(f"/v2/models/{model}").url
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _phases(args: argparse.Namespace) -> list[report.Phase]:
    if args.rate is not None:
        connections = DEFAULT_CONNECTIONS_OPEN if args.connections is None else args.connections
        if connections < 1:
            raise UsageError(f"--connections must be at least 1, not {connections}")
        return [
            report.Phase(None, rate, connections, args.warmup, args.duration)
            for rate in _levels(args.rate, "--rate", float)
        ]
    return [
        report.Phase(level, None, level, args.warmup, args.duration)
        for level in _levels(args.concurrency, "--concurrency", int)
    ]


def plans(phase: report.Phase, base: PhasePlan, processes: int) -> list[PhasePlan | None]:
    """Each worker process's share of `phase`: connections split evenly, the open-loop schedule
    interleaved over the workers that have connections (None: a worker with none)."""
    shares = split_evenly(phase.connections, processes)
    active = sum(1 for share in shares if share)
    result: list[PhasePlan | None] = []
    for index, share in enumerate(shares):
        if not share:
            result.append(None)
            continue
        result.append(
            PhasePlan(
                **{
                    **base.__dict__,
                    "connections": share,
                    "rate": phase.rate,
                    "offset": index,
                    "stride": active,
                    "warmup_s": phase.warmup_s,
                    "duration_s": phase.duration_s,
                }
            )
        )
    return result


def _run_phases(args: argparse.Namespace, target: payloads.Target, request: bytes) -> dict[str, Any]:
    from servekit._bench.progress import PhaseProgress  # noqa: PLC0415
    from servekit._bench.workers import WorkerPool  # noqa: PLC0415

    phases = _phases(args)
    base = PhasePlan(
        host=target.host,
        port=target.port,
        request=request,
        connections=1,
        rate=None,
        timeout_s=args.timeout,
        tls=target.scheme == "https",
        verify_tls=not args.insecure,
        arrival=args.arrival,
    )
    summaries = []
    with WorkerPool(min(args.processes, max(p.connections for p in phases))) as pool:
        for phase in phases:
            with PhaseProgress(
                phase.label, phase.warmup_s + phase.duration_s, False if args.quiet else None
            ) as bar:
                result = pool.run(plans(phase, base, pool.size), bar.update)
            summary = report.phase_summary(phase, result)
            summaries.append(summary)
            for warning in report.warnings(summary):
                print(f"servekit: warning: {warning}", file=sys.stderr)
    head, _, _ = request.partition(b"\r\n\r\n")
    setup = {
        "target": target.url,
        "method": head.split(b" ", 1)[0].decode(),
        "body_bytes": len(request) - len(head) - 4,
        "template": args.template,
        "arrival": args.arrival if args.rate is not None else None,
        "processes": pool.size,
    }
    return report.document(setup, summaries)


def _write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print(f"servekit bench: {results['target']} ({results['method']}, {results['processes']} process(es))")
    print(report.results_table(results["phases"], first_byte=args.stream))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"servekit: wrote {args.out}", file=sys.stderr)
    if args.plot:
        from servekit._bench.plot import html_report  # noqa: PLC0415

        Path(args.plot).write_text(html_report(results))
        print(f"servekit: wrote {args.plot}", file=sys.stderr)
