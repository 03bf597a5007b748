"""The admin routes tried as one group: the same route answers each path as without the group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route

from servekit._http.app import RouteGroup, grouped_by_prefix


def _answer(name: str) -> Callable[[Request], Awaitable[PlainTextResponse]]:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{name} {dict(request.path_params)}")

    return endpoint


def _routes() -> list[BaseRoute]:
    return [
        Route("/healthz", _answer("healthz"), methods=["GET"]),
        Route("/-/status", _answer("status"), methods=["GET"]),
        Route("/-/jobs/{job_id}", _answer("job"), methods=["GET", "DELETE"]),
        Route("/predict", _answer("predict"), methods=["POST"]),
        Route("/{a}/{b}", _answer("two-parts"), methods=["GET"]),  # could match /-/x: admin goes first
        Route("/{path:path}", _answer("raw"), methods=["GET", "POST", "PUT"]),
    ]


def test_admin_routes_become_one_group_where_the_first_one_was() -> None:
    routes = grouped_by_prefix(_routes(), "/-/")
    assert [type(r).__name__ for r in routes] == ["Route", "RouteGroup", "Route", "Route", "Route"]
    group = routes[1]
    assert isinstance(group, RouteGroup)
    assert [r.path for r in group.routes if isinstance(r, Route)] == ["/-/status", "/-/jobs/{job_id}"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/-/status"),
        ("GET", "/-/jobs/7"),
        ("DELETE", "/-/jobs/7"),
        ("POST", "/-/status"),  # a wrong method on an admin route: 405 as before
        ("GET", "/-/unknown"),  # no admin route: falls through to the app's own routes
        ("GET", "/-/a/b/c"),
        ("POST", "/predict"),
        ("GET", "/healthz"),
        ("GET", "/x/y"),
        ("PUT", "/anything/else"),
    ],
)
async def test_every_path_gets_the_same_answer_with_and_without_the_group(method: str, path: str) -> None:
    async def answer(routes: list[BaseRoute]) -> tuple[int, str]:
        transport = httpx.ASGITransport(app=Starlette(routes=routes))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.request(method, path)
        return response.status_code, response.text

    assert await answer(grouped_by_prefix(_routes(), "/-/")) == await answer(_routes())
