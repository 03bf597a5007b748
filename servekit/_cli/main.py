"""`servekit` command: `servekit serve TARGET|BUNDLE`, `servekit batch TARGET`, `servekit bench`,
`servekit build`, `servekit bundles`, `servekit deploy`, `servekit status`, `servekit rollout ...`,
`servekit models ...`, `servekit keys ...`, `servekit --version`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from servekit._cli import batch as batch_command
from servekit._cli import bench as bench_command
from servekit._cli import keys as keys_command
from servekit._cli import rollout
from servekit._cli.bundles import BUNDLE_COMMANDS, add_bundle_commands, run_bundle_command
from servekit._cli.models import add_model_commands, run_model_command
from servekit._cli.target import TargetError, load_app
from servekit._spec.deployment import Application
from servekit._version import __version__
from servekit.errors import ServekitError

if TYPE_CHECKING:
    from servekit._http.server import Server


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `servekit` command."""
    parser = argparse.ArgumentParser(prog="servekit", description="Serve model apps written with servekit.")
    parser.add_argument("--version", action="version", version=f"servekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an app over HTTP on this machine")
    serve.add_argument(
        "target", help="the app: pkg.module:app, path/to/file.py:app, or a bundle (.tar.gz or its folder)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    serve.add_argument(
        "--reload",
        action="store_true",
        help="redeploy the app when its code changes (rolling, no dropped requests)",
    )
    serve.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="where replicas run: this machine (default) or a Ray cluster through Ray Serve",
    )
    serve.add_argument(
        "--address",
        default=None,
        help="with --backend ray: the cluster to join (auto, host:port, ray://host:10001; default "
        "RAY_ADDRESS); without one servekit starts a local Ray and stops it on exit",
    )
    serve.add_argument(
        "--isolation",
        choices=["in_process", "process"],
        default=None,
        help="where replicas run for deployments that do not choose (default: in_process)",
    )
    serve.add_argument(
        "--gpus",
        default=None,
        help="GPU ids to plan with, like 0,1 (overrides detection and SERVEKIT_GPUS; '' for none)",
    )
    serve.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        help="seconds the app may take to start before servekit gives up (default: none locally, 600 on Ray)",
    )
    serve.add_argument(
        "--wait-for-nodes",
        action="store_true",
        help="with --backend ray: start even when the cluster's nodes cannot hold every replica yet, "
        "and wait up to --start-timeout (600 s) for nodes to join (servekit waits on its own when "
        "the cluster's autoscaler can add them)",
    )
    serve.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="the event loop (default: uvloop when installed)",
    )
    serve.add_argument(
        "--http",
        choices=["auto", "h11", "httptools"],
        default="auto",
        help="the HTTP parser (default: httptools when installed)",
    )
    serve.add_argument(
        "--strict",
        action="store_true",
        help="validate request bodies strictly (no coercion of '1' or false into numbers) by default",
    )
    serve.add_argument(
        "--data-dir",
        default=None,
        help="where async jobs are kept: a directory (SQLite) or a postgresql:// URL (default: memory)",
    )
    serve.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve interactive API docs at /docs (default: on, unless the ingress serves raw "
        "requests, mounts an ASGI app, or has an endpoint under /docs)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="413 above this")
    serve.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on shutdown",
    )
    _add_guard_flags(serve)
    serve.add_argument(
        "--no-metrics",
        action="store_true",
        help="serve no /metrics and count nothing (also turns the dashboard off)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port instead of the app's (local backend; 0 picks a free one)",
    )
    serve.add_argument("--no-dashboard", action="store_true", help="serve no /-/dashboard page")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one structured line per request (method, route, status, duration, request id, client)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text or as one JSON object per line (time, level, request id, trace id, "
        "deployment, replica, message), here and in every replica",
    )
    serve.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry traces across every hop (needs servekit[otel]; configured by the OTEL_* "
        "variables); default: on when OTEL_TRACES_EXPORTER names an exporter",
    )
    batch_command.add_parser(commands)
    bench_command.add_parser(commands)
    status = commands.add_parser("status", help="show an app's deployments and replicas")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a servekit server, like http://127.0.0.1:8000 (reads /-/status)")
    where.add_argument("--address", help="a Ray cluster (auto, host:port, ray://host:10001)")
    status.add_argument("--app", default=None, help="with --address: only this Serve application")
    status.add_argument("--json", action="store_true", help="print the status documents as JSON")
    rollout.add_parser(commands)
    keys_command.add_parser(commands)
    add_bundle_commands(commands)
    add_model_commands(commands)
    return parser


def _add_guard_flags(serve: argparse.ArgumentParser) -> None:
    """`servekit serve`'s flags for API keys, rate limits, CORS, TLS and header limits."""
    serve.add_argument(
        "--api-keys",
        default=None,
        metavar="FILE",
        help="require API keys from this file (YAML or JSON, hashes only; see `servekit keys`); "
        "default: SERVEKIT_API_KEYS_FILE or SERVEKIT_API_KEYS, else no keys",
    )
    serve.add_argument(
        "--rate-limit",
        default=None,
        help="per API key (or client address) token bucket, like '100/s burst 200'",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="a browser origin allowed to call the app, like https://app.example.com (repeat; '*' for any)",
    )
    serve.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate chain (PEM)")
    serve.add_argument("--ssl-keyfile", default=None, help="the private key (PEM) of --ssl-certfile")
    serve.add_argument("--max-header-count", type=int, default=100, help="431 above this many headers")
    serve.add_argument(
        "--max-header-bytes", type=int, default=32 * 1024, help="431 above this many header bytes"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    simple = {"status": _status, "rollout": _rollout, "models": run_model_command, "keys": keys_command.run}
    if args.command in simple:
        return simple[args.command](args)
    if args.command in BUNDLE_COMMANDS:
        return run_bundle_command(args)
    if args.command in ("batch", "bench"):
        logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return batch_command.run(args) if args.command == "batch" else bench_command.run(args)
    from servekit._replica.request_context import log_fields  # noqa: PLC0415
    from servekit._telemetry.logs import configure_logging  # noqa: PLC0415

    configure_logging(args.log_format, log_fields, level=args.log_level.upper())
    return _serve(args)


def _status(args: argparse.Namespace) -> int:
    from servekit._cli.status import StatusError, render, status_from_cluster, status_from_url  # noqa: PLC0415

    try:
        documents = status_from_url(args.url) if args.url else status_from_cluster(args.address, args.app)
    except StatusError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1
    print(render(documents, args.json))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    try:
        print(rollout.run(args))
    except rollout.RolloutError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    from servekit._cli.reload import Reloader  # noqa: PLC0415
    from servekit._http.server import serve, serve_until_signal  # noqa: PLC0415 (keeps --version fast)
    from servekit._runtime.options import run_options  # noqa: PLC0415

    try:
        options = run_options(
            backend=args.backend,
            address=args.address,
            isolation=args.isolation,
            gpus=args.gpus,
            start_timeout_s=args.start_timeout,
            wait_for_nodes=args.wait_for_nodes,
            loop=args.loop,
            data_dir=args.data_dir,
            tracing=args.tracing,
            log_format=args.log_format,
        )
    except ServekitError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 2
    try:
        with _tracebacks_logged(args.log_level == "debug"):
            app = _load(args.target, args.reload)
            reloader = Reloader(args.target, app) if args.reload else None
            server = serve(
                app,
                args.host,
                args.port,
                blocking=False,
                max_body_bytes=args.max_body_bytes,
                graceful_shutdown_s=args.grace_period,
                access_log=args.access_log,
                strict=args.strict,
                http=args.http,
                api_keys=args.api_keys,
                rate_limit=args.rate_limit,
                cors=args.cors_origin,
                ssl_certfile=args.ssl_certfile,
                ssl_keyfile=args.ssl_keyfile,
                max_header_count=args.max_header_count,
                max_header_bytes=args.max_header_bytes,
                metrics=not args.no_metrics,
                metrics_port=args.metrics_port,
                dashboard=False if args.no_dashboard else None,
                docs=args.docs,
                **options.model_dump(exclude_defaults=True),
            )
    except (TargetError, ServekitError, OSError, ImportError) as exc:  # BundleError is a ServekitError
        hint = (
            ""
            if exc.__cause__ is None or args.log_level == "debug"
            else " (--log-level debug shows the traceback)"
        )
        print(f"servekit: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
    _banner(args, server)
    if reloader is not None:
        reloader.start(server)
    serve_until_signal(server, before_shutdown=reloader.stop if reloader is not None else None)
    if args.log_format == "json":
        logging.getLogger("servekit.cli").info("stopped")
    else:
        print("servekit: stopped", file=sys.stderr)
    return 0


def _banner(args: argparse.Namespace, server: Server) -> None:
    """Say where the app is served: as lines for people, or as one JSON log line with --log-format json."""
    if args.log_format == "json":
        from servekit._telemetry.logs import FIELDS_ATTR  # noqa: PLC0415

        fields = {"url": server.url, "target": args.target, "runs": server.location, "routes": server.routes}
        logging.getLogger("servekit.cli").info(
            "serving %s at %s", args.target, server.url, extra={FIELDS_ATTR: fields}
        )
        return
    print(f"servekit: serving {args.target} at {server.url}", file=sys.stderr)
    print(f"  runs {server.location}", file=sys.stderr)
    for methods, path in server.routes:
        print(f"  {methods:<8} {server.url}{path}", file=sys.stderr)
    print(f"  built-in: {' '.join(_builtin_paths(args))}  (Ctrl-C to stop)", file=sys.stderr)
    if server.metrics_url is not None and args.metrics_port is not None:
        print(f"  metrics: {server.metrics_url}", file=sys.stderr)
    sys.stderr.flush()


def _builtin_paths(args: argparse.Namespace) -> list[str]:
    """The built-in paths the server answers, as its flags leave them."""
    paths = ["/healthz", "/readyz", "/-/status", "/-/jobs", "/openapi.json"]
    if not args.no_metrics and args.metrics_port is None:
        paths.append("/metrics")
    if not args.no_metrics and not args.no_dashboard:
        paths.append("/-/dashboard")
    if args.docs is not False:
        paths.append("/docs")
    return paths


def _load(target: str, reload: bool) -> Application:
    """The app `target` names: imported from the source, or from a verified bundle."""
    from servekit._bundle.models import describe_models  # noqa: PLC0415
    from servekit._bundle.store import is_bundle, open_bundle  # noqa: PLC0415
    from servekit._cli.bundle_app import load_bundle_app  # noqa: PLC0415

    if not is_bundle(target):
        return load_app(target)
    if reload:
        raise TargetError(f"{target!r} is a bundle, and --reload serves source code; drop --reload")
    opened = open_bundle(target)
    where = "" if opened.sha256 is None else f", sha256 {opened.sha256}"
    manifest = opened.manifest
    print(
        f"servekit: bundle {manifest.name} {manifest.version}: {len(manifest.files)} files verified{where}",
        file=sys.stderr,
    )
    models = describe_models(manifest.models)
    if models is not None:
        print(f"  {models}", file=sys.stderr)
    return load_bundle_app(opened.folder, manifest)


@contextlib.contextmanager
def _tracebacks_logged(enabled: bool) -> Iterator[None]:
    """While starting, log errors without their tracebacks unless `enabled`: the CLI prints one line."""
    handlers: list[logging.Handler] = [] if enabled else list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_drop_traceback)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_drop_traceback)


def _drop_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = None
    record.exc_text = None
    return True


def _one_line(exc: BaseException) -> str:
    """`exc` as one line, without the `[Errno N]` prefix an OSError adds."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {str(exc.filename)!r}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
