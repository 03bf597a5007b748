"""`serve()`: run an app with its HTTP ingress, in the background or until a signal.

The HTTP front is uvicorn on the runtime's event loop for the local backend, and Ray Serve's
proxy (serving the same Starlette ingress inside the ingress replica) for the Ray backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol, Unpack, cast

import uvicorn

from servekit._http.app import DEFAULT_MAX_BODY_BYTES, build_asgi_app, describe_routes
from servekit._http.routes import ingress_routes
from servekit._replica.jobs.service import JobSlot
from servekit._runtime.app import AppHandle, RunningApp
from servekit._runtime.backends import get_backend, make_runtime
from servekit._runtime.interface import HttpIngress, ProxiedRuntime, ServingRuntime
from servekit._runtime.options import RunKeywords, RunOptions, run_options
from servekit._runtime.routing import RouterControl
from servekit._spec.deployment import Application
from servekit._spec.graph import AppGraph, build_graph
from servekit.errors import DeploymentOptionError

logger = logging.getLogger("servekit.server")


class HttpFront(Protocol):
    """What serves a running app's HTTP: uvicorn in this process, or Ray Serve's proxy."""

    host: str
    port: int
    routes: list[tuple[str, str]]
    grace_s: float
    """How long in-flight requests get on shutdown, unless `Server.shutdown` says otherwise."""

    def refresh(self) -> None:
        """Switch to the routes of the app as redeployed."""
        ...

    def stop(self, grace_s: float) -> None:
        """Stop accepting connections and let in-flight requests finish (up to `grace_s`)."""
        ...

    def stopped(self) -> bool:
        """Whether the front stopped on its own (the HTTP server died)."""
        ...


class Server:
    """A running HTTP server for an app. Stop it with `shutdown()` or use it as a context manager."""

    def __init__(self, running: RunningApp, front: HttpFront) -> None:
        self._running = running
        self._front = front
        self.host = front.host
        """The address the server listens on."""
        self.port = front.port
        """The port the server listens on (the real one when started with port=0)."""
        self.handle = AppHandle(running)
        """The ingress handle, to call the app in-process too."""

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(methods, path) of each user route."""
        return self._front.routes

    @property
    def location(self) -> str:
        """Where the app runs, in words ("on this machine", "on Ray Serve as app 'Api'")."""
        return self._running.runtime.location

    def router(self, name: str) -> RouterControl:
        """Operate router `name`: `status()`, `set_weights({...})`, `switch(arm)`, `switch_back()`."""
        return self._running.router(name)

    def stopped(self) -> bool:
        """Whether the server stopped: `shutdown()` was called, or the HTTP server died."""
        return self._running.stopped or self._front.stopped()

    def redeploy(self, app: Application) -> None:
        """Update the served app to `app` without dropping requests.

        Changed deployments roll replica by replica (a new one is ready before an old one
        drains), new ones start, removed ones stop, and the HTTP routes switch to the new
        ingress's once every deployment runs. The ingress must keep its name. If a new replica
        cannot start, the app keeps serving exactly as before and `DeploymentStartError` says why.
        """
        self._running.update(app)
        self._front.refresh()

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting connections, let in-flight requests finish (up to `grace_s`), stop the app."""
        if self._running.stopped:
            return
        grace = self._front.grace_s if grace_s is None else grace_s
        try:
            self._front.stop(grace)
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


HttpImpl = Literal["auto", "h11", "httptools"]
HTTP_IMPLS: tuple[HttpImpl, ...] = ("auto", "h11", "httptools")


def serve(
    app: Application,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    blocking: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    graceful_shutdown_s: float = 30.0,
    access_log: bool = False,
    strict: bool = False,
    http: HttpImpl = "auto",
    docs: bool | None = None,
    **options: Unpack[RunKeywords],
) -> Server:
    """Run `app` and serve its ingress over HTTP at `host`:`port` (0 picks a free port).

    With `blocking=False` it returns the running `Server` at once. With `blocking=True` it
    serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests finish
    within `graceful_shutdown_s`, stops the app and returns. Bodies larger than
    `max_body_bytes` are refused with 413. `strict=True` validates request bodies strictly
    (no coercion of `"1"` or `false` into numbers) wherever an endpoint does not choose.
    `http` picks the HTTP parser ("auto": httptools when installed, else h11). `docs` serves
    interactive API docs (Swagger UI, offline) at `/docs`: None turns them on unless the
    ingress serves raw requests, mounts an ASGI app, or has an endpoint under `/docs`.

    The other keywords choose where the app runs, as for `servekit.run`: `backend="local"`
    serves from uvicorn in this process (an ingress that serves raw requests or an ASGI app
    stays in-process whatever `isolation` says); `backend="ray"` deploys the app to Ray Serve
    and serves the same routes from Ray Serve's proxy at `host`:`port` (when Serve already
    runs on that cluster, its proxy keeps the address it has).
    """
    run = run_options(**options)
    front_options = _FrontOptions(
        max_body_bytes, graceful_shutdown_s, access_log, strict, http, run.data_dir, docs
    )
    server = _start(build_graph(app), host, port, front_options, run)
    if blocking:
        serve_until_signal(server)
    return server


@dataclass(frozen=True)
class _FrontOptions:
    max_body_bytes: int
    grace_s: float
    access_log: bool
    strict: bool
    http: HttpImpl
    data_dir: str | None = None
    docs: bool | None = None

    def __post_init__(self) -> None:
        if self.http not in HTTP_IMPLS:
            choices = ", ".join(map(repr, HTTP_IMPLS))
            raise DeploymentOptionError(f"http={self.http!r} is unknown; use one of {choices}")

    def build_app(self, serving: ServingRuntime, jobs: JobSlot | None = None) -> Any:
        """The ingress app; without `jobs` (on Ray, in the ingress replica) it keeps its own store."""
        return build_asgi_app(
            serving,
            self.max_body_bytes,
            strict=self.strict,
            jobs=jobs,
            data_dir=self.data_dir,
            docs=self.docs,
        )


def _start(graph: AppGraph, host: str, port: int, front: _FrontOptions, options: RunOptions) -> Server:
    """Start the app on its backend and its HTTP front: the backend's proxy, or uvicorn here."""
    found = ingress_routes(graph.ingress_node.deployment)
    in_process = found.raw_call or found.asgi_app is not None
    if get_backend(options.backend).serves_http:
        http = HttpIngress(host, _free_port(host) if port == 0 else port, front.build_app, front.access_log)
        running = RunningApp.start(graph, options, http)
        address = cast(ProxiedRuntime, running.runtime).http_address()
        return Server(running, ProxyFront(running, address, front.grace_s))
    http = HttpIngress(host, port, front.build_app, front.access_log, ingress_in_process=in_process)
    runtime = make_runtime(graph, options, http)  # refuses bad options before the port is taken
    sock = _bind(host, port)
    try:
        running = RunningApp.launch(runtime, options)
    except BaseException:
        sock.close()
        raise
    try:
        uvicorn_front = UvicornFront(running, cast(ServingRuntime, running.runtime), sock, front)
    except BaseException:
        sock.close()
        running.stop(0)
        raise
    return Server(running, uvicorn_front)


class UvicornFront:
    """Serves the app's ingress from uvicorn on the runtime's event loop, in this process."""

    def __init__(
        self, running: RunningApp, serving: ServingRuntime, sock: socket.socket, options: _FrontOptions
    ) -> None:
        self._running = running
        self._serving = serving
        self._options = options
        self.grace_s = options.grace_s
        self._asgi = SwappableApp(options.build_app(serving, running.jobs))
        config = uvicorn.Config(
            self._asgi,
            http=options.http,
            lifespan="off",
            log_config=None,
            access_log=options.access_log,
            timeout_graceful_shutdown=math.ceil(options.grace_s),
            server_header=False,
        )
        self._http = uvicorn.Server(config)
        self._task = running.thread.run(_start_http(self._http, sock))
        self.host, self.port = sock.getsockname()[:2]
        self.routes: list[tuple[str, str]] = self._asgi.app.state.servekit_routes

    def refresh(self) -> None:
        """Serve the redeployed ingress's routes from now on."""
        self._asgi.app = self._options.build_app(self._serving, self._running.jobs)
        self.routes = self._asgi.app.state.servekit_routes

    def stop(self, grace_s: float) -> None:
        """Stop uvicorn: no new connections, in-flight requests get `grace_s`."""
        self._running.thread.run(_stop_http(self._http, self._task, grace_s))

    def stopped(self) -> bool:
        """Whether uvicorn exited on its own."""
        return self._task.done()


class ProxyFront:
    """The app's HTTP as Ray Serve's proxy serves it: routes to show, nothing to run here."""

    def __init__(self, running: RunningApp, address: tuple[str, int], grace_s: float) -> None:
        self._running = running
        self.grace_s = grace_s
        self.host, self.port = address
        self.routes = self._describe()

    def _describe(self) -> list[tuple[str, str]]:
        return describe_routes(ingress_routes(self._running.runtime.graph.ingress_node.deployment))

    def refresh(self) -> None:
        """Show the redeployed ingress's routes (the proxy switched on its own)."""
        self.routes = self._describe()

    def stop(self, grace_s: float) -> None:
        """Nothing to stop here: deleting the app (the runtime's shutdown) drains its requests."""

    def stopped(self) -> bool:
        """Whether the app stopped on the backend's side."""
        return self._running.runtime.state == "stopped"


class SwappableApp:
    """The ASGI app uvicorn serves, replaced in one step on a redeploy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _free_port(host: str) -> int:
    """A port that was free a moment ago, for a front (Ray Serve's proxy) that cannot bind port 0."""
    with _bind(host, 0) as sock:
        port: int = sock.getsockname()[1]
    return port


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket at `host`:`port`, made as TCP (IPPROTO_TCP) so that asyncio sets
    TCP_NODELAY on every connection it accepts: without it Nagle's algorithm meets delayed ACKs
    and each keep-alive request waits ~40 ms on the pure-asyncio stack."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def serve_until_signal(server: Server, before_shutdown: Callable[[], None] | None = None) -> None:
    """Block until SIGINT or SIGTERM (or the HTTP server dies), then shut `server` down gracefully.

    `before_shutdown` runs first (the CLI stops its reloader there, so no redeploy races the drain).
    """
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
            if server.stopped():  # the HTTP server died on its own
                break
    finally:
        try:
            if before_shutdown is not None:
                before_shutdown()
        finally:
            server.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
