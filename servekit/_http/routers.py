"""The routers' admin API under `/-/routers`, and the request-context middleware.

`RequestContextMiddleware` makes each HTTP request's `RequestContext` (the request id from a
valid `x-request-id` header or a new one, and the headers, cookies and query parameters the
app's routers key on), sets it for the request's handling, echoes `x-request-id` on every
response (also the 500 of an exception that escaped every handler, which it answers itself),
and posts the outcomes user code recorded during the request to the routers.

Admin routes (JSON; 400 naming the problem for a bad body or weight map, 404 for an unknown
router, and the router left as it was):

- ``GET /-/routers``, ``GET /-/routers/{name}``: live weights, arms and their counters.
- ``PUT|POST /-/routers/{name}/weights`` with ``{"weights": {"v1": 90, "v2": 10}}``.
- ``POST /-/routers/{name}/switch`` with ``{"to": "green", "bake_s": 60, "warmup": {...}}``.
- ``POST /-/routers/{name}/switch-back``.
- ``POST /-/routers/{name}/outcomes`` with ``{"request_id": "...", "name": "clicked", "value": 1}``.

Rollout routes (404 for an unknown router or one without a canary, 400 for a canary whose
baseline or candidate is not an arm, 409 for an action on a canary that has ended):

- ``GET /-/rollouts``, ``GET /-/rollouts/{name}``: each canary's state, step, checks and events.
- ``POST /-/rollouts/{name}/canary`` with ``{"candidate": "v2", "steps": [10, 50, 100], ...}``.
- ``POST /-/rollouts/{name}/pause|resume|abort``, ``POST /-/rollouts/{name}/promote`` (with
  ``{"full": true}`` for 100% at once).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._http.errors import error_response
from servekit._replica.request_context import (
    REQUEST_ID_HEADER,
    RequestContext,
    request_id_from,
    reset_request,
    set_request,
)
from servekit._runtime.routing import RouterOperations
from servekit._spec.graph import AppGraph
from servekit._spec.routing import sticky_source
from servekit.errors import BadRequestError

_REQUEST_ID = REQUEST_ID_HEADER.encode()


def context_sources(graph: AppGraph) -> frozenset[str]:
    """The request-context keys the app's routers read (``"header:x-user-id"``, ...)."""
    found = (sticky_source(node.sticky) for node in graph.routers.values())
    return frozenset(source for source in found if source is not None)


class RequestContextMiddleware:
    """Sets the request context for each HTTP request and echoes its id as `x-request-id`."""

    def __init__(
        self, app: ASGIApp, sources: Iterable[str], routers: RouterOperations | None, echoed: bool = False
    ) -> None:
        self.app = app
        self.routers = routers
        self.echoed = echoed
        """The front in front of this app sets and echoes `x-request-id` itself (Ray Serve's proxy):
        take its id as it is and add no header."""
        self.headers = {s.partition(":")[2].encode(): s for s in sources if s.startswith("header:")}
        self.cookies = {s.partition(":")[2]: s for s in sources if s.startswith("cookie:")}
        self.query = {s.partition(":")[2]: s for s in sources if s.startswith("query:")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = self._context(scope)
        header = (_REQUEST_ID, context.request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not self.echoed:
                    message["headers"] = [*message.get("headers", []), header]
            await send(message)

        token = set_request(context)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # escaped every handler: still the error shape, with the id
            if started:
                raise
            await error_response(exc, Request(scope))(scope, receive, send_with_id)
        finally:
            reset_request(token)
            if context.outcomes and self.routers is not None:
                for outcome, value in context.outcomes:
                    await self.routers.post_outcome(None, context.request_id, outcome, value)

    def _context(self, scope: Scope) -> RequestContext:
        given: str | None = None
        keys: dict[str, str] = {}
        cookie_header: str | None = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID:
                given = value.decode("latin-1")
            elif name == b"cookie" and self.cookies:
                cookie_header = value.decode("latin-1")
            source = self.headers.get(name)
            if source is not None:
                keys[source] = value.decode("latin-1")
        self._cookies_and_query(scope, cookie_header, keys)
        return RequestContext(given if self.echoed and given else request_id_from(given), keys)

    def _cookies_and_query(self, scope: Scope, cookie_header: str | None, keys: dict[str, str]) -> None:
        if cookie_header is not None:
            cookies = SimpleCookie()
            cookies.load(cookie_header)
            for name, source in self.cookies.items():
                if name in cookies:
                    keys[source] = cookies[name].value
        if self.query and scope.get("query_string"):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            for name, source in self.query.items():
                if name in query:
                    keys[source] = query[name][0]


def router_routes(routers: RouterOperations) -> list[BaseRoute]:
    """The `/-/routers` admin routes over `routers`."""

    def guarded(work: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await work(request))
            except Exception as exc:
                return error_response(exc, request)

        return endpoint

    async def list_all(request: Request) -> Any:
        return await routers.router_view()

    async def one(request: Request) -> Any:
        return await routers.router_view(request.path_params["name"])

    async def weights(request: Request) -> Any:
        body = await _body(request, "weights", '{"weights": {"v1": 90, "v2": 10}}')
        return await routers.set_weights(request.path_params["name"], body["weights"])

    async def switch(request: Request) -> Any:
        body = await _body(request, "to", '{"to": "green", "bake_s": 60}')
        return await routers.switch(
            request.path_params["name"], body["to"], body.get("warmup"), body.get("bake_s", 60.0)
        )

    async def switch_back(request: Request) -> Any:
        return await routers.switch_back(request.path_params["name"])

    async def outcomes(request: Request) -> Any:
        example = '{"request_id": "...", "name": "clicked", "value": 1}'
        body = await _body(request, "request_id", example)
        return await routers.post_outcome(
            request.path_params["name"],
            body["request_id"],
            body.get("name", ""),
            body.get("value", ""),
        )

    return [
        Route("/-/routers", guarded(list_all), methods=["GET"]),
        Route("/-/routers/{name}", guarded(one), methods=["GET"]),
        Route("/-/routers/{name}/weights", guarded(weights), methods=["PUT", "POST"]),
        Route("/-/routers/{name}/switch", guarded(switch), methods=["POST"]),
        Route("/-/routers/{name}/switch-back", guarded(switch_back), methods=["POST"]),
        Route("/-/routers/{name}/outcomes", guarded(outcomes), methods=["POST"]),
        *rollout_routes(routers, guarded),
    ]


def rollout_routes(
    routers: RouterOperations,
    guarded: Callable[[Callable[[Request], Awaitable[Any]]], Callable[[Request], Awaitable[Response]]],
) -> list[BaseRoute]:
    """The `/-/rollouts` admin routes (canaries) over `routers`."""

    async def list_all(request: Request) -> Any:
        return await routers.rollout_view()

    async def one(request: Request) -> Any:
        return await routers.rollout_view(request.path_params["name"])

    async def start(request: Request) -> Any:
        body = await _body(request, "candidate", '{"candidate": "v2", "steps": [10, 50, 100], "bake_s": 60}')
        return await routers.start_canary(request.path_params["name"], body)

    def action(name: str) -> Callable[[Request], Awaitable[Any]]:
        async def act(request: Request) -> Any:
            full = False
            if name == "promote" and await request.body():
                body = await _body(request, "full", '{"full": true}')
                full = body["full"] is True
            return await routers.canary_action(request.path_params["name"], name, full)

        return act

    return [
        Route("/-/rollouts", guarded(list_all), methods=["GET"]),
        Route("/-/rollouts/{name}", guarded(one), methods=["GET"]),
        Route("/-/rollouts/{name}/canary", guarded(start), methods=["POST"]),
        *(
            Route(f"/-/rollouts/{{name}}/{name}", guarded(action(name)), methods=["POST"])
            for name in ("pause", "resume", "promote", "abort")
        ),
    ]


async def _body(request: Request, required: str, example: str) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadRequestError(f"the body must be JSON, like {example}") from None
    if not isinstance(body, dict) or required not in body:
        raise BadRequestError(
            f"the body must be a JSON object with {required!r}, like {example}; got {body!r}"
        )
    return body
