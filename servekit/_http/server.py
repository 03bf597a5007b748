"""`serve()`: run an app with its HTTP ingress on uvicorn, in the background or until a signal."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import threading
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from servekit._http.app import DEFAULT_MAX_BODY_BYTES, build_asgi_app
from servekit._runtime.app import AppHandle, RunningApp
from servekit._spec.deployment import Application

logger = logging.getLogger("servekit.server")


class Server:
    """A running HTTP server for an app. Stop it with `shutdown()` or use it as a context manager."""

    def __init__(
        self,
        running: RunningApp,
        http: uvicorn.Server,
        task: asyncio.Task[None],
        *,
        address: tuple[str, int],
        routes: list[tuple[str, str]],
    ) -> None:
        host, port = address
        self._running = running
        self._http = http
        self._task = task
        self.host = host
        """The address the server listens on."""
        self.port = port
        """The port the server listens on (the real one when started with port=0)."""
        self.routes = routes
        """(methods, path) of each user route."""
        self.handle = AppHandle(running)
        """The ingress handle, to call the app in-process too."""
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting connections, let in-flight requests finish (up to `grace_s`), stop the app."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        configured = self._http.config.timeout_graceful_shutdown
        grace = float(configured or 0) if grace_s is None else grace_s
        try:
            self._running.thread.run(_stop_http(self._http, self._task, grace))
        finally:
            self._running.stop(grace)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def serve(
    app: Application,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    blocking: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    graceful_shutdown_s: float = 30.0,
    access_log: bool = False,
) -> Server:
    """Run `app` and serve its ingress over HTTP at `host`:`port` (0 picks a free port).

    With `blocking=False` it returns the running `Server` at once. With `blocking=True` it
    serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests finish
    within `graceful_shutdown_s`, stops the app and returns. Bodies larger than
    `max_body_bytes` are refused with 413.
    """
    server = _start(
        app,
        host,
        port,
        max_body_bytes=max_body_bytes,
        grace_s=graceful_shutdown_s,
        access_log=access_log,
    )
    if blocking:
        _serve_until_signal(server)
    return server


def _start(
    app: Application, host: str, port: int, *, max_body_bytes: int, grace_s: float, access_log: bool
) -> Server:
    sock = _bind(host, port)
    running = RunningApp(app)
    try:
        asgi = build_asgi_app(running.runtime, max_body_bytes)
        config = uvicorn.Config(
            asgi,
            lifespan="off",
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=math.ceil(grace_s),
            server_header=False,
        )
        http = uvicorn.Server(config)
        task = running.thread.run(_start_http(http, sock))
    except BaseException:
        sock.close()
        running.stop(0)
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    address = (bound_host, bound_port)
    return Server(running, http, task, address=address, routes=asgi.state.servekit_routes)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def _start_http(http: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(http.serve(sockets=[sock]))
    while not http.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.005)
    return task


async def _stop_http(http: uvicorn.Server, task: asyncio.Task[None], grace_s: float) -> None:
    http.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(task), grace_s + 5)
    except TimeoutError:
        http.force_exit = True
        task.cancel()


def _serve_until_signal(server: Server) -> None:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: draining in-flight requests", signal.Signals(signum).name)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    logger.info("serving at %s", server.url)
    try:
        while not stop.wait(0.2):
            if server._task.done():  # the HTTP server died on its own
                break
    finally:
        server.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
