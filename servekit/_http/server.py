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
from servekit._http.routes import ingress_routes
from servekit._runtime.app import AppHandle, RunningApp
from servekit._spec.config import Isolation
from servekit._spec.deployment import Application
from servekit._spec.graph import build_graph
from servekit.errors import GraphError

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
        asgi: SwappableApp,
        max_body_bytes: int,
    ) -> None:
        host, port = address
        self._running = running
        self._asgi = asgi
        self._max_body_bytes = max_body_bytes
        self._http = http
        self._task = task
        self.host = host
        """The address the server listens on."""
        self.port = port
        """The port the server listens on (the real one when started with port=0)."""
        self.routes: list[tuple[str, str]] = asgi.app.state.servekit_routes
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

    def redeploy(self, app: Application) -> None:
        """Update the served app to `app` without dropping requests.

        Changed deployments roll replica by replica (a new one is ready before an old one
        drains), new ones start, removed ones stop, and the HTTP routes switch to the new
        ingress's once every deployment runs. The ingress must keep its name.
        """
        graph = build_graph(app)
        current = self._running.runtime.graph.ingress
        if graph.ingress != current:
            raise GraphError(
                f"a redeploy must keep the ingress {current!r}; the new app's ingress is {graph.ingress!r}"
            )
        self._running.update(app)
        self._asgi.app = build_asgi_app(self._running.runtime, self._max_body_bytes)
        self.routes = self._asgi.app.state.servekit_routes

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
    isolation: Isolation | None = None,
    gpus: str | None = None,
) -> Server:
    """Run `app` and serve its ingress over HTTP at `host`:`port` (0 picks a free port).

    With `blocking=False` it returns the running `Server` at once. With `blocking=True` it
    serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests finish
    within `graceful_shutdown_s`, stops the app and returns. Bodies larger than
    `max_body_bytes` are refused with 413.

    `isolation` sets where replicas run for deployments that do not choose ("in_process" or
    "process"); an ingress that serves raw requests or an ASGI app stays in-process. `gpus`
    declares the GPU ids to plan with (like "0,1"), overriding detection and `SERVEKIT_GPUS`.
    """
    server = _start(
        app,
        host,
        port,
        max_body_bytes=max_body_bytes,
        grace_s=graceful_shutdown_s,
        access_log=access_log,
        isolation=isolation,
        gpus=gpus,
    )
    if blocking:
        _serve_until_signal(server)
    return server


def _start(
    app: Application,
    host: str,
    port: int,
    *,
    max_body_bytes: int,
    grace_s: float,
    access_log: bool,
    isolation: Isolation | None,
    gpus: str | None,
) -> Server:
    ingress = build_graph(app).ingress_node
    found = ingress_routes(ingress.deployment)
    in_process_only = [ingress.name] if found.raw_call or found.asgi_app is not None else []
    sock = _bind(host, port)
    running = RunningApp(app, isolation=isolation, gpus=gpus, in_process_only=in_process_only)
    try:
        asgi = SwappableApp(build_asgi_app(running.runtime, max_body_bytes))
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
    return Server(running, http, task, address=address, asgi=asgi, max_body_bytes=max_body_bytes)


class SwappableApp:
    """The ASGI app uvicorn serves, replaced in one step on a redeploy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


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
