"""`servekit` command: `servekit serve TARGET`, `servekit --version`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from servekit._cli.target import TargetError, load_app, watch_paths
from servekit._version import __version__
from servekit.errors import ServekitError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `servekit` command."""
    parser = argparse.ArgumentParser(prog="servekit", description="Serve model apps written with servekit.")
    parser.add_argument("--version", action="version", version=f"servekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an app over HTTP on this machine")
    serve.add_argument("target", help="the app: pkg.module:app or path/to/file.py:app")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    serve.add_argument("--reload", action="store_true", help="restart the app when its code changes")
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="413 above this")
    serve.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on shutdown",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.reload:
        return _serve_with_reload(args, [a for a in argv if a != "--reload"])
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from servekit._http.server import serve  # noqa: PLC0415 (keeps --version fast)

    try:
        with _tracebacks_logged(args.log_level == "debug"):
            app = load_app(args.target)
            server = serve(
                app,
                args.host,
                args.port,
                blocking=False,
                max_body_bytes=args.max_body_bytes,
                graceful_shutdown_s=args.grace_period,
                access_log=args.access_log,
            )
    except (TargetError, ServekitError, OSError) as exc:
        hint = (
            ""
            if exc.__cause__ is None or args.log_level == "debug"
            else " (--log-level debug shows the traceback)"
        )
        print(f"servekit: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
    print(f"servekit: serving {args.target} at {server.url}", file=sys.stderr)
    for methods, path in server.routes:
        print(f"  {methods:<8} {server.url}{path}", file=sys.stderr)
    print(
        "  built-in: /healthz /readyz /-/status /openapi.json  (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    from servekit._http.server import _serve_until_signal  # noqa: PLC0415

    _serve_until_signal(server)
    print("servekit: stopped", file=sys.stderr)
    return 0


def _serve_with_reload(args: argparse.Namespace, child_args: list[str]) -> int:
    import watchfiles  # noqa: PLC0415

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    paths = watch_paths(args.target)
    print(f"servekit: reloading on changes in {', '.join(map(str, paths))}", file=sys.stderr)
    watchfiles.run_process(
        *paths,
        target=_child,
        args=(child_args,),
        watch_filter=watchfiles.PythonFilter(),
        callback=lambda changes: print("servekit: code changed, restarting", file=sys.stderr),
    )
    return 0


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


def _child(argv: list[str]) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    sys.exit(main())
