"""Binding a request to an endpoint's arguments in lax and strict mode, and how the mode is chosen:
`@endpoint(strict=...)` when set, else the app's default."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from starlette.requests import Request

import servekit as sk
from servekit._http.routes import EndpointRoute, ingress_routes
from servekit.errors import RequestValidationError


class Priced(BaseModel):
    name: str
    price: float
    count: int = 1
    fragile: bool = False


@sk.deployment
class Shop:
    @sk.endpoint("/lax", strict=False)
    async def lax(self, item: Priced) -> Priced:
        return item

    @sk.endpoint("/strict", strict=True)
    async def strict(self, item: Priced) -> Priced:
        return item

    @sk.endpoint("/inherit")
    async def inherit(self, item: Priced) -> Priced:
        return item

    @sk.endpoint("/search/{shelf}", methods=["GET"], strict=True)
    async def search(
        self, shelf: int, n: int = 10, ratio: float = 1.0, exact: bool = False, q: str = ""
    ) -> dict[str, Any]:
        return {}


def route(path: str, app_strict: bool = False) -> EndpointRoute:
    return next(r for r in ingress_routes(Shop, strict=app_strict).endpoints if r.path == path)


def request(body: bytes = b"", query: bytes = b"", path_params: dict[str, Any] | None = None) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": query,
        "headers": [],
        "path_params": path_params or {},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


async def bind(route: EndpointRoute, **parts: Any) -> dict[str, Any]:
    return await route.params.bind(request(**parts))


async def refused(route: EndpointRoute, **parts: Any) -> dict[str, Any]:
    with pytest.raises(RequestValidationError) as info:
        await bind(route, **parts)
    assert len(info.value.errors) == 1
    return info.value.errors[0]


async def test_lax_mode_coerces_like_pydantic_does() -> None:
    bound = await bind(route("/lax"), body=b'{"name": "cup", "price": false, "count": 2.0, "fragile": 1}')
    assert bound["item"] == Priced(name="cup", price=0.0, count=2, fragile=True)


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        pytest.param(b'{"name": "cup", "price": false}', "price", "float_type", id="false-is-no-number"),
        pytest.param(b'{"name": "cup", "price": "1"}', "price", "float_type", id="string-is-no-number"),
        pytest.param(b'{"name": "cup", "price": 1, "count": 2.0}', "count", "int_type", id="2.0-is-no-int"),
        pytest.param(b'{"name": "cup", "price": 1, "fragile": 1}', "fragile", "bool_type", id="1-is-no-bool"),
        pytest.param(b'{"name": 5, "price": 1}', "name", "string_type", id="number-is-no-string"),
    ],
)
async def test_strict_body_refuses_lax_coercions_naming_the_field(body: bytes, field: str, kind: str) -> None:
    error = await refused(route("/strict"), body=body)
    assert (error["loc"], error["type"]) == (["body", field], kind)


async def test_strict_body_takes_a_json_integer_for_a_float() -> None:
    bound = await bind(route("/strict"), body=b'{"name": "cup", "price": 1}')
    assert bound["item"].price == 1.0
    assert isinstance(bound["item"].price, float)


async def test_strict_query_and_path_read_json_numbers_and_booleans() -> None:
    bound = await bind(
        route("/search/{shelf}"), query=b"n=5&ratio=2&exact=true&q=42", path_params={"shelf": "3"}
    )
    assert bound == {"shelf": 3, "n": 5, "ratio": 2.0, "exact": True, "q": "42"}


@pytest.mark.parametrize(
    ("query", "field", "sent"),
    [
        pytest.param(b"n=5.0", "n", "5.0", id="5.0-is-no-int"),
        pytest.param(b"n=%205", "n", " 5", id="padded-is-no-int"),
        pytest.param(b"n=1_000", "n", "1_000", id="underscores-are-no-int"),
        pytest.param(b"exact=yes", "exact", "yes", id="yes-is-no-bool"),
        pytest.param(b"exact=1", "exact", "1", id="1-is-no-bool"),
        pytest.param(b"exact=True", "exact", "True", id="True-is-no-bool"),
        pytest.param(b"ratio=nan", "ratio", "nan", id="nan-is-no-json-number"),
    ],
)
async def test_strict_query_refuses_lax_coercions_quoting_what_was_sent(
    query: bytes, field: str, sent: str
) -> None:
    error = await refused(route("/search/{shelf}"), query=query, path_params={"shelf": "3"})
    assert error["loc"] == ["query", field]
    assert error["input"] == sent


@pytest.mark.parametrize(
    ("path", "app_strict", "strict"),
    [
        pytest.param("/inherit", False, False, id="inherits-lax"),
        pytest.param("/inherit", True, True, id="inherits-strict"),
        pytest.param("/lax", True, False, id="endpoint-false-overrides-strict-app"),
        pytest.param("/strict", False, True, id="endpoint-true-overrides-lax-app"),
    ],
)
async def test_an_endpoint_follows_the_app_default_unless_it_sets_strict(
    path: str, app_strict: bool, strict: bool
) -> None:
    chosen = route(path, app_strict=app_strict)
    assert chosen.params.strict is strict
    body = b'{"name": "cup", "price": false}'
    if strict:
        await refused(chosen, body=body)
    else:
        assert (await bind(chosen, body=body))["item"].price == 0.0


def test_endpoint_strict_must_be_a_bool_or_none() -> None:
    with pytest.raises(sk.DeploymentOptionError, match=r"strict must be True, False or None; got 'yes'"):
        sk.endpoint("/x", strict="yes")  # type: ignore[arg-type]
