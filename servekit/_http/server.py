"""`serve()`: run an app with its HTTP ingress, in the background or until a signal.

The HTTP front is uvicorn on the runtime's event loop for the local backend, and Ray Serve's
proxy (serving the same Starlette ingress inside the ingress replica) for the Ray backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol, Unpack, cast

import uvicorn

from servekit._http.app import DEFAULT_MAX_BODY_BYTES, build_asgi_app, describe_routes
from servekit._http.guards import Cors, GuardOptions, RateLimit, guard_layers, guard_options, start_notes
from servekit._http.guards.options import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_COUNT
from servekit._http.metrics import MetricsApp
from servekit._http.routes import ingress_routes
from servekit._http.telemetry import EdgeTelemetry, TelemetryOptions
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
    scheme: str
    """``https`` when the front serves TLS, else ``http``."""
    routes: list[tuple[str, str]]
    grace_s: float
    """How long in-flight requests get on shutdown, unless `Server.shutdown` says otherwise."""
    metrics_port: int | None
    """The port `/metrics` is served on (the app's own, or its metrics port); None: metrics are off."""

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
        """The base URL, like ``http://127.0.0.1:8000`` (``https://`` when serving TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self._front.scheme}://{host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this server, like ``http://127.0.0.1:9100/metrics`` (None when
        it was started with metrics=False)."""
        port = self._front.metrics_port
        if port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/metrics"

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
    api_keys: str | os.PathLike[str] | None = None,
    rate_limit: str | RateLimit | None = None,
    cors: str | Sequence[str] | Cors | None = None,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    metrics: bool = True,
    metrics_port: int | None = None,
    dashboard: bool | None = None,
    docs: bool | None = None,
    **options: Unpack[RunKeywords],
) -> Server:
    """Run `app` and serve its ingress over HTTP at `host`:`port` (0 picks a free port).

    With `blocking=False` it returns the running `Server` at once. With `blocking=True` it
    serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests finish
    within `graceful_shutdown_s`, stops the app and returns. Bodies larger than
    `max_body_bytes` are refused with 413. `strict=True` validates request bodies strictly
    (no coercion of `"1"` or `false` into numbers) wherever an endpoint does not choose.
    `http` picks the HTTP parser ("auto": httptools when installed, else h11).
    `access_log=True` logs one structured record per request (method, route, status, duration,
    request id, client) on the ``servekit.access`` logger.

    Guards (see docs/security.md): `api_keys` names a keys file (YAML or JSON, hashes only;
    re-read when it changes), else ``SERVEKIT_API_KEYS_FILE`` or ``SERVEKIT_API_KEYS`` are read;
    with keys, every route but the health probes and the public paths needs a key with the right
    scope (401/403). Without keys the admin API answers only clients on this machine.
    `rate_limit` (like ``"100/s burst 200"``) is a token bucket per API key, or per client
    address for requests without one (429 with ``Retry-After``). `cors` allows browser origins
    (an origin, a list, or a `Cors`). `ssl_certfile` and `ssl_keyfile` serve HTTPS. Requests with
    more than `max_header_count` headers or `max_header_bytes` of them get 431.

    `metrics=True` (the default) counts every request and serves Prometheus metrics at
    `/metrics`, or on its own port with `metrics_port` (local backend; 0 picks a free one, see
    `Server.metrics_url`); `metrics=False` installs no metrics layer at all. `dashboard` serves the
    live page `/-/dashboard` (default: when the metrics are on).
    `docs` serves interactive API docs (Swagger UI, offline) at `/docs`: None turns them on
    unless the ingress serves raw requests, mounts an ASGI app, or has an endpoint under `/docs`.

    The other keywords choose where the app runs, as for `servekit.run`: `backend="local"`
    serves from uvicorn in this process (an ingress that serves raw requests or an ASGI app
    stays in-process whatever `isolation` says); `backend="ray"` deploys the app to Ray Serve
    and serves the same routes from Ray Serve's proxy at `host`:`port` (when Serve already
    runs on that cluster, its proxy keeps the address it has). `tracing=True` traces every
    request across every hop with OpenTelemetry (the ``otel`` extra; the standard ``OTEL_*``
    variables configure it, and ``OTEL_TRACES_EXPORTER`` alone turns it on);
    `log_format="json"` (or "text") makes every log line here and in every replica carry its
    request id, trace id, deployment and replica, as one JSON object per line for "json".
    """
    run = run_options(**options)
    guards = guard_options(api_keys, rate_limit, cors, max_header_count, max_header_bytes)
    tls = _tls(ssl_certfile, ssl_keyfile)
    telemetry = TelemetryOptions(metrics, metrics_port, dashboard)
    front_options = _FrontOptions(
        max_body_bytes,
        graceful_shutdown_s,
        access_log,
        strict,
        http,
        run.data_dir,
        guards,
        tls,
        telemetry,
        docs,
    )
    for warning, note in start_notes(guards, host):
        logger.log(logging.WARNING if warning else logging.INFO, note)
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
    guards: GuardOptions = field(default_factory=GuardOptions)
    tls: Tls | None = None
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)
    docs: bool | None = None

    def __post_init__(self) -> None:
        if self.http not in HTTP_IMPLS:
            choices = ", ".join(map(repr, HTTP_IMPLS))
            raise DeploymentOptionError(f"http={self.http!r} is unknown; use one of {choices}")

    def build_app(
        self, serving: ServingRuntime, jobs: JobSlot | None = None, telemetry: EdgeTelemetry | None = None
    ) -> Any:
        """The ingress app; without `jobs` and `telemetry` (on Ray, in the ingress replica) it keeps
        its own job store, request metrics and dashboard."""
        return build_asgi_app(
            serving,
            self.max_body_bytes,
            strict=self.strict,
            jobs=jobs,
            data_dir=self.data_dir,
            access_log=self.access_log,
            guards=self.guards,
            telemetry=telemetry or EdgeTelemetry(self.telemetry),
            docs=self.docs,
        )


@dataclass(frozen=True)
class Tls:
    """The certificate chain and private key (PEM files) the front serves HTTPS with."""

    certfile: str
    keyfile: str


def _tls(certfile: str | os.PathLike[str] | None, keyfile: str | os.PathLike[str] | None) -> Tls | None:
    """`Tls` for the two files, checked readable now; None for neither; an error for one alone."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise DeploymentOptionError(
            "TLS needs both ssl_certfile and ssl_keyfile (--ssl-certfile and --ssl-keyfile), PEM files"
        )
    for name, path in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if not os.access(path, os.R_OK):
            raise DeploymentOptionError(f"{name}={os.fspath(path)!r} is not a readable file")
    return Tls(os.path.abspath(certfile), os.path.abspath(keyfile))


def _start(graph: AppGraph, host: str, port: int, front: _FrontOptions, options: RunOptions) -> Server:
    """Start the app on its backend and its HTTP front: the backend's proxy, or uvicorn here."""
    found = ingress_routes(graph.ingress_node.deployment)
    in_process = found.raw_call or found.asgi_app is not None
    if get_backend(options.backend).serves_http:
        if front.telemetry.metrics_port is not None:
            raise DeploymentOptionError(
                f"metrics_port={front.telemetry.metrics_port} works on the local backend only; on Ray, "
                "/metrics is served by Serve's proxy on the app's port, and Ray's own metrics export "
                "carries servekit's metrics too (see docs/observability.md)"
            )
        http = HttpIngress(
            host,
            _free_port(host) if port == 0 else port,
            front.build_app,
            front.access_log,
            ssl_certfile=front.tls.certfile if front.tls else None,
            ssl_keyfile=front.tls.keyfile if front.tls else None,
        )
        running = RunningApp.start(graph, options, http)
        address = cast(ProxiedRuntime, running.runtime).http_address()
        scheme = "https" if front.tls else "http"
        return Server(running, ProxyFront(running, address, front.grace_s, front.telemetry.metrics, scheme))
    http = HttpIngress(host, port, front.build_app, front.access_log, ingress_in_process=in_process)
    runtime = make_runtime(graph, options, http)  # refuses bad options before the port is taken
    sock = _bind(host, port)
    metrics_port = front.telemetry.metrics_port
    try:
        metrics_sock = _bind(host, metrics_port) if metrics_port is not None else None
    except BaseException:
        sock.close()
        raise
    sockets = [s for s in (sock, metrics_sock) if s is not None]
    try:
        running = RunningApp.launch(runtime, options)
    except BaseException:
        for opened in sockets:
            opened.close()
        raise
    try:
        serving = cast(ServingRuntime, running.runtime)
        uvicorn_front = UvicornFront(running, serving, sock, front, metrics_sock)
    except BaseException:
        for opened in sockets:
            opened.close()
        running.stop(0)
        raise
    return Server(running, uvicorn_front)


class UvicornFront:
    """Serves the app's ingress from uvicorn on the runtime's event loop, in this process."""

    def __init__(
        self,
        running: RunningApp,
        serving: ServingRuntime,
        sock: socket.socket,
        options: _FrontOptions,
        metrics_sock: socket.socket | None = None,
    ) -> None:
        self._running = running
        self._serving = serving
        self._options = options
        self.grace_s = options.grace_s
        self.scheme = "https" if options.tls else "http"
        self.telemetry = EdgeTelemetry(options.telemetry)
        """The server's request metrics and dashboard, kept across redeploys."""
        self._asgi = SwappableApp(options.build_app(serving, running.jobs, self.telemetry))
        self._http = uvicorn.Server(self._config(self._asgi, options.tls))
        self._task = running.thread.run(_start_http(self._http, sock))
        self.host, self.port = sock.getsockname()[:2]
        self.routes: list[tuple[str, str]] = self._asgi.app.state.servekit_routes
        self.metrics_port: int | None = self.port if options.telemetry.metrics else None
        self._metrics: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        if metrics_sock is not None:
            metrics_app = _guarded(MetricsApp(serving, self.telemetry.http), options.guards)
            metrics_http = uvicorn.Server(self._config(metrics_app, options.tls))
            self._metrics = (metrics_http, running.thread.run(_start_http(metrics_http, metrics_sock)))
            self.metrics_port = metrics_sock.getsockname()[1]
        running.thread.run(_start_telemetry(self.telemetry, serving))

    def _config(self, app: Any, tls: Tls | None) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            http=self._options.http,
            lifespan="off",
            log_config=None,
            access_log=False,  # the app writes its own, structured (`servekit._http.access_log`)
            timeout_graceful_shutdown=math.ceil(self._options.grace_s),
            server_header=False,
            ssl_certfile=tls.certfile if tls else None,
            ssl_keyfile=tls.keyfile if tls else None,
        )

    def refresh(self) -> None:
        """Serve the redeployed ingress's routes from now on."""
        self._asgi.app = self._options.build_app(self._serving, self._running.jobs, self.telemetry)
        self.routes = self._asgi.app.state.servekit_routes

    def stop(self, grace_s: float) -> None:
        """Stop uvicorn: no new connections, in-flight requests get `grace_s`."""
        try:
            self._running.thread.run(_stop_http(self._http, self._task, grace_s))
        finally:
            if self._metrics is not None:
                self._running.thread.run(_stop_http(*self._metrics, 0))
            self._running.thread.run(self.telemetry.stop())

    def stopped(self) -> bool:
        """Whether uvicorn exited on its own."""
        return self._task.done()


class ProxyFront:
    """The app's HTTP as Ray Serve's proxy serves it: routes to show, nothing to run here."""

    def __init__(
        self,
        running: RunningApp,
        address: tuple[str, int],
        grace_s: float,
        metrics: bool,
        scheme: str = "http",
    ) -> None:
        self._running = running
        self.grace_s = grace_s
        self.scheme = scheme
        self.host, self.port = address
        self.metrics_port = self.port if metrics else None
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


def _guarded(app: Any, guards: GuardOptions) -> Any:
    """`app` behind the same guards as the main app (API keys: the `metrics` scope)."""
    for layer in reversed(guard_layers(guards)):
        app = layer.cls(app, *layer.args, **layer.kwargs)
    return app


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


async def _start_telemetry(telemetry: EdgeTelemetry, serving: ServingRuntime) -> None:
    telemetry.start(serving)


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
