"""The Starlette ingress of a running app: endpoint routes, built-in routes, telemetry, guards, body limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._http.access_log import AccessLog
from servekit._http.docs_ui import DOCS_PATH, DocsUI
from servekit._http.errors import error_response, router_error
from servekit._http.guards import GuardOptions, guard_layers, guard_options
from servekit._http.jobs import HTTP_KIND, http_executor, job_routes, submit_request, wants_async
from servekit._http.metrics import INGRESS_APP_KEY
from servekit._http.openapi import openapi_document
from servekit._http.responses import render, stream_response, wants_sse
from servekit._http.routers import RequestContextMiddleware, context_sources, router_routes
from servekit._http.routes import EndpointRoute, IngressRoutes, ingress_routes
from servekit._http.telemetry import EdgeTelemetry
from servekit._http.tracing import TracingMiddleware
from servekit._replica.jobs.service import JobSlot
from servekit._replica.multiplex import MODEL_ID_HEADER, carrying_model_id
from servekit._runtime.interface import ServingRuntime
from servekit._telemetry import tracing
from servekit._version import __version__
from servekit.errors import DeploymentOptionError, PayloadTooLargeError

Handler = Callable[[Request], Awaitable[Response]]
INSTANCE_SCOPE_KEY = "servekit.instance"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ADMIN_PREFIX = "/-/"
"""servekit's own admin namespace (status, jobs, routers, rollouts)."""
_MATCHED_ROUTE = "servekit.route"
_MODEL_ID = MODEL_ID_HEADER.encode()


def raw_header(request: Request, name: bytes) -> str | None:
    """The first value of header `name` (lower case), read from the ASGI scope's raw list."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def build_asgi_app(
    runtime: ServingRuntime,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    strict: bool = False,
    jobs: JobSlot | None = None,
    data_dir: str | None = None,
    access_log: bool = False,
    guards: GuardOptions | None = None,
    telemetry: EdgeTelemetry | None = None,
    docs: bool | None = None,
) -> Starlette:
    """The ASGI app serving `runtime`'s ingress deployment over HTTP.

    `strict` is the default validation mode of endpoints that do not set `@endpoint(strict=...)`.
    `jobs` holds the app's async jobs (the local server passes the app's own); without it the app
    keeps its own, in `data_dir` (a directory or a `postgresql://` URL), started and stopped
    with the ASGI lifespan (as where Ray Serve runs the ingress). `access_log` logs one
    structured record per request (`servekit._http.access_log`); while this process traces, each
    request is served in a server span (`servekit._http.tracing`). `guards` says what the edge
    enforces (API keys, rate limits, CORS, header limits); without it, the safe defaults and the
    keys the environment names (``SERVEKIT_API_KEYS_FILE``, ``SERVEKIT_API_KEYS``).
    `telemetry` holds the server's request metrics and dashboard (kept across redeploys); without
    it the app makes its own, with metrics and the dashboard on, the dashboard's sampler run by
    the ASGI lifespan too.
    `docs` serves the interactive API docs at `/docs` (None: unless the ingress serves raw
    requests, mounts an ASGI app, or has an endpoint under `/docs`, whose paths `/docs` would hide).
    """
    ingress = runtime.graph.ingress_node
    found = ingress_routes(ingress.deployment, strict)
    slot = jobs if jobs is not None else JobSlot(data_dir)
    slot.register(HTTP_KIND, http_executor(runtime, ingress.name, found.endpoints))
    own_telemetry = telemetry is None
    telemetry = telemetry or EdgeTelemetry()
    routes: list[BaseRoute] = _builtin_routes(runtime, found, max_body_bytes) + job_routes(slot)
    routes += _telemetry_routes(telemetry, runtime, found)
    operations = runtime.routers
    if operations is not None:
        routes += router_routes(operations)
    routes += [
        Route(r.path, _endpoint_handler(runtime, ingress.name, r, slot), methods=list(r.methods))
        for r in found.endpoints
    ]
    if found.raw_call:
        routes.append(Route("/{path:path}", _raw_handler(runtime, ingress.name), methods=list(ALL_METHODS)))
    app = Starlette(
        routes=grouped_by_prefix(routes, ADMIN_PREFIX),
        middleware=[
            Middleware(
                RequestContextMiddleware,
                sources=context_sources(runtime.graph),
                routers=operations,
                echoed=getattr(runtime, "request_ids_echoed", False),
            ),
            *([Middleware(TracingMiddleware, tracing=active)] if (active := tracing.active()) else []),
            *([Middleware(AccessLog)] if access_log else []),
            *telemetry.middleware(routes),
            *guard_layers(guards or guard_options(), getattr(runtime, "edge_copies", 1)),
            Middleware(BodyLimit, max_body_bytes=max_body_bytes),
            *_docs_layer(docs, found, ingress.name),
        ],
        exception_handlers={HTTPException: router_error, Exception: router_error},
        lifespan=None
        if jobs is not None
        else _own_lifespan(slot, runtime, telemetry if own_telemetry else None),
    )
    if found.asgi_app is not None:
        app.router.default = _IngressASGI(runtime, ingress.name, found.asgi_app)
    app.state.servekit_routes = describe_routes(found)
    app.state.servekit_http_metrics = telemetry.http
    return app


def _telemetry_routes(
    telemetry: EdgeTelemetry, runtime: ServingRuntime, found: IngressRoutes
) -> list[BaseRoute]:
    """`/metrics` and the dashboard's routes; refuses an endpoint they would hide."""
    routes = telemetry.routes(runtime)
    taken = {getattr(route, "path", None) for route in routes}
    for endpoint in found.endpoints:
        if endpoint.path in taken:
            raise DeploymentOptionError(
                f"endpoint {endpoint.path!r} of {runtime.graph.ingress!r} clashes with servekit's own "
                "route; serve with metrics=False and dashboard=False (or move /metrics with metrics_port=)"
            )
    return routes


def _docs_layer(docs: bool | None, found: IngressRoutes, title: str) -> list[Middleware]:
    """The `/docs` layer when it is on (by default: when servekit owns the app's paths and no
    endpoint of the app is at `/docs` or below it)."""
    owned = found.raw_call or found.asgi_app is not None
    taken = any(r.path == DOCS_PATH or r.path.startswith(DOCS_PATH + "/") for r in found.endpoints)
    on = docs if docs is not None else not (owned or taken)
    return [Middleware(DocsUI, title=title)] if on else []


def describe_routes(found: IngressRoutes) -> list[tuple[str, str]]:
    """(methods, path) of each user route, for printing."""
    described = [(",".join(r.methods), r.path) for r in found.endpoints]
    if found.raw_call:
        described.append(("*", "/{path}"))
    if found.asgi_app is not None:
        described.append(("*", "/* (mounted ASGI app)"))
    return described


def _own_lifespan(
    slot: JobSlot, runtime: ServingRuntime, telemetry: EdgeTelemetry | None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """Open the job store (and run queued jobs) at start-up when it is durable, and start the
    dashboard's sampler of an app that keeps its own telemetry; close both at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if slot.location is not None:
            await slot.service()
        if telemetry is not None:
            telemetry.start(runtime)
        try:
            yield
        finally:
            if telemetry is not None:
                await telemetry.stop()
            await slot.close()

    return lifespan


def _endpoint_handler(
    runtime: ServingRuntime, deployment: str, route: EndpointRoute, jobs: JobSlot
) -> Handler:
    bind = route.params.bind
    method = route.method_name
    call = runtime.call
    always_async = route.mode == "async"

    async def unary(request: Request) -> Response:
        if always_async or wants_async(request):
            return await submit_request(jobs, route, request)
        try:
            model_id = raw_header(request, _MODEL_ID)
            if model_id:
                result = await carrying_model_id(model_id, call(deployment, method, (), await bind(request)))
            else:
                result = await call(deployment, method, (), await bind(request))
        except Exception as exc:
            return error_response(exc, request)
        return render(result)

    async def streaming(request: Request) -> Response:
        try:
            chunks = runtime.stream(deployment, method, (), await bind(request))
            model_id = raw_header(request, _MODEL_ID)
            first = await (carrying_model_id(model_id, anext(chunks)) if model_id else anext(chunks))
        except StopAsyncIteration:
            empty = "text/event-stream" if wants_sse(request) else "application/x-ndjson"
            return StreamingResponse(iter(()), media_type=empty)
        except Exception as exc:
            return error_response(exc, request)
        return stream_response(first, chunks, wants_sse(request))

    return streaming if route.streaming else unary


def _raw_handler(runtime: ServingRuntime, deployment: str) -> Handler:
    async def raw(request: Request) -> Response:
        try:
            called = runtime.call(deployment, "__call__", (request,), {})
            model_id = raw_header(request, _MODEL_ID)
            return render(await (carrying_model_id(model_id, called) if model_id else called))
        except Exception as exc:
            return error_response(exc, request)

    return raw


def _builtin_routes(runtime: ServingRuntime, found: IngressRoutes, max_body_bytes: int) -> list[BaseRoute]:
    node = runtime.graph.ingress_node
    document: dict[str, Any] = {}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = await runtime.is_ready()
        return JSONResponse({"ready": ready, "state": runtime.state}, 200 if ready else 503)

    async def status(request: Request) -> Response:
        await runtime.refresh_stats()
        return JSONResponse(runtime.status())

    async def openapi(request: Request) -> Response:
        if not document:
            version = node.deployment.config.version or __version__
            document.update(openapi_document(node.name, version, found.endpoints, max_body_bytes))
        return JSONResponse(document)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/-/status", status, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def grouped_by_prefix(routes: list[BaseRoute], prefix: str) -> list[BaseRoute]:
    """`routes` with those whose path starts with `prefix` tried as one group, where the first was.

    Starlette tries routes one by one, a regex each; a request to the app's own endpoints then
    paid for every admin route ahead of them. A group costs one prefix check for other paths,
    and inside it the routes are tried in their order, so which route answers is unchanged.
    """
    members = [r for r in routes if isinstance(r, Route) and r.path.startswith(prefix)]
    if len(members) < 2:
        return routes
    first = routes.index(members[0])
    rest = [r for r in routes if not (isinstance(r, Route) and r.path.startswith(prefix))]
    return [*rest[:first], RouteGroup(prefix, members), *rest[first:]]


class RouteGroup(BaseRoute):
    """Routes sharing a path prefix, tried only for paths under it."""

    def __init__(self, prefix: str, routes: Sequence[BaseRoute]) -> None:
        self.prefix = prefix
        self.routes = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """The first route that matches fully, else the first partial match (a wrong method)."""
        path, root = scope["path"], scope.get("root_path", "")
        if not (path[len(root) :] if root and path.startswith(root) else path).startswith(self.prefix):
            return Match.NONE, {}
        partial: Scope | None = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:  # "route": the member, as Starlette's router would set it
                return Match.FULL, {**child, _MATCHED_ROUTE: route, "route": route}
            if match is Match.PARTIAL and partial is None:
                partial = {**child, _MATCHED_ROUTE: route, "route": route}
        return (Match.NONE, {}) if partial is None else (Match.PARTIAL, partial)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the route `matches` chose."""
        await scope[_MATCHED_ROUTE].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        """The path of the member route called `name`."""
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)


class _IngressASGI:
    """Runs a user's ASGI app on an ingress replica, under the same admission control."""

    def __init__(self, runtime: ServingRuntime, deployment: str, app: ASGIApp) -> None:
        self._runtime = runtime
        self._deployment = deployment
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        scope[INGRESS_APP_KEY] = True  # (for the metrics layer's route label)
        try:
            async with self._runtime.replica(self._deployment) as replica:
                await self._app({**scope, INSTANCE_SCOPE_KEY: replica.instance}, receive, send)
        except Exception as exc:
            if scope["type"] == "http":
                await error_response(exc, Request(scope))(scope, receive, send)


def deployment_instance(request: Request) -> Any:
    """The ingress deployment's instance serving `request`, inside an app mounted with `@ingress`."""
    try:
        return request.scope[INSTANCE_SCOPE_KEY]
    except KeyError:
        raise RuntimeError(
            "deployment_instance() works only in an app mounted with @servekit.ingress"
        ) from None


class BodyLimit:
    """Refuse request bodies over `max_body_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                await error_response(PayloadTooLargeError(self.limit))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        await self._counting(scope, receive, send)

    async def _counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise PayloadTooLargeError(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLargeError as exc:
            if not started:
                await error_response(exc)(scope, receive, send)
