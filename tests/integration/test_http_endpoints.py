"""Endpoints over a real socket: parameter sources, return types, streaming, raw HTTP, mounted apps,
graphs with batching, built-in routes, OpenAPI, and starting `serve` more than once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import servekit as sk

pytestmark = pytest.mark.integration

StartServer = Callable[..., sk.Server]


class Order(BaseModel):
    item: str
    quantity: int = Field(gt=0)


class Receipt(BaseModel):
    item: str
    quantity: int
    total_cents: int


@sk.deployment(num_replicas=2, version="2024-06-01")
class Shop:
    @sk.endpoint("/orders")
    async def order(self, order: Order) -> Receipt:
        """Place an order."""
        return Receipt(item=order.item, quantity=order.quantity, total_cents=order.quantity * 250)

    @sk.endpoint("/items/{item_id}", methods=["GET"])
    async def item(self, item_id: int, detail: bool = False, limit: int = 10) -> dict[str, Any]:
        return {"item_id": item_id, "detail": detail, "limit": limit}

    @sk.endpoint("/inspect", methods=["POST", "PUT"])
    async def inspect_request(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        return {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "probe": request.headers.get("x-probe"),
            "body": body.decode(),
        }

    @sk.endpoint("/digest")
    def digest(self, data: bytes) -> dict[str, Any]:
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    @sk.endpoint("/return/dict", methods=["GET"])
    async def return_dict(self) -> dict[str, Any]:
        return {"kind": "dict", "nested": {"ok": True}}

    @sk.endpoint("/return/list", methods=["GET"])
    async def return_list(self) -> list[int]:
        return [3, 1, 2]

    @sk.endpoint("/return/str", methods=["GET"])
    async def return_str(self) -> str:
        return "plain text ✓"

    @sk.endpoint("/return/bytes", methods=["GET"])
    async def return_bytes(self) -> bytes:
        return b"\x00\x01\xffbinary"

    @sk.endpoint("/return/model", methods=["GET"])
    async def return_model(self) -> Receipt:
        return Receipt(item="nut", quantity=3, total_cents=30)

    @sk.endpoint("/return/response", methods=["GET"])
    async def return_response(self) -> Response:
        return PlainTextResponse("created", status_code=201, headers={"x-custom": "yes"})

    @sk.endpoint("/count", methods=["GET"])
    async def count(self, n: int) -> AsyncIterator[dict[str, int]]:
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i, "square": i * i}


@sk.deployment
class RawEcho:
    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": body.decode(),
            }
        )


@sk.deployment
def double(payload: dict[str, int]) -> dict[str, int]:
    return {"doubled": payload["x"] * 2}


@sk.deployment
class Upper:
    def __call__(self, text: str) -> str:
        return text.upper()


async def shout(request: Request) -> Response:
    gateway = sk.deployment_instance(request)
    text = (await request.json())["text"]
    return JSONResponse({"shouted": await gateway.upper(text), "calls": gateway.count()})


async def who(request: Request) -> Response:
    return PlainTextResponse(f"gateway at {request.url.path}")


web = Starlette(routes=[Route("/shout", shout, methods=["POST"]), Route("/who/{rest:path}", who)])


@sk.deployment
@sk.ingress(web)
class Gateway:
    def __init__(self, upper: sk.DeploymentHandle) -> None:
        self.upper = upper
        self.calls = 0

    def count(self) -> int:
        self.calls += 1
        return self.calls


def checksum(text: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(text))


@sk.deployment
class Embedder:
    @sk.batch(max_batch_size=16, max_wait_ms=50)
    async def embed(self, texts: list[str]) -> list[int]:
        await asyncio.sleep(0.01)
        return [checksum(text) for text in texts]


@sk.deployment
class Scorer:
    def __init__(self, embedder: sk.DeploymentHandle) -> None:
        self.embedder = embedder

    async def score(self, text: str) -> int:
        return 2 * await self.embedder.embed(text) + len(text)


class ScoreRequest(BaseModel):
    text: str


class ScoreResponse(BaseModel):
    text: str
    score: int


@sk.deployment
class ScoreApi:
    def __init__(self, scorer: sk.DeploymentHandle) -> None:
        self.scorer = scorer

    @sk.endpoint("/score")
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        return ScoreResponse(text=request.text, score=await self.scorer.score(request.text))


@sk.deployment(max_ongoing_requests=4)
class Waiter:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @sk.endpoint("/wait", methods=["GET"])
    async def wait(self) -> str:
        for _ in range(1000):  # bounded: at most ~10 s
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return "done"


@pytest.fixture
def shop(serve_app: StartServer) -> sk.Server:
    return serve_app(Shop.bind())


def test_pydantic_body_is_validated_and_model_returned_as_json(shop: sk.Server, client: httpx.Client) -> None:
    response = client.post(shop.url + "/orders", json={"item": "bolt", "quantity": 4})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"item": "bolt", "quantity": 4, "total_cents": 1000}


def test_body_constraint_violation_is_422(shop: sk.Server, client: httpx.Client) -> None:
    response = client.post(shop.url + "/orders", json={"item": "bolt", "quantity": 0})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["error"]["errors"]] == [["body", "quantity"]]


def test_path_and_query_parameters_are_converted_to_their_types(
    shop: sk.Server, client: httpx.Client
) -> None:
    response = client.get(shop.url + "/items/42", params={"detail": "true", "limit": "3"})
    assert response.status_code == 200
    assert response.json() == {"item_id": 42, "detail": True, "limit": 3}


def test_query_parameters_fall_back_to_defaults(shop: sk.Server, client: httpx.Client) -> None:
    response = client.get(shop.url + "/items/1")
    assert response.json() == {"item_id": 1, "detail": False, "limit": 10}


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/items/abc", {}, ["path", "item_id"]),
        ("/items/1", {"limit": "ten"}, ["query", "limit"]),
        ("/items/1", {"detail": "sometimes"}, ["query", "detail"]),
    ],
)
def test_path_or_query_of_the_wrong_type_is_422_at_its_location(
    shop: sk.Server, client: httpx.Client, path: str, params: dict[str, str], loc: list[str]
) -> None:
    response = client.get(shop.url + path, params=params)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["error"]["errors"]] == [loc]


class Measure(BaseModel):
    grams: float


@sk.deployment
class Scale:
    @sk.endpoint("/lax")
    async def lax(self, measure: Measure) -> Measure:
        return measure

    @sk.endpoint("/strict", strict=True)
    async def strict(self, measure: Measure, unit: str = "g", exact: bool = False) -> Measure:
        return measure


def test_strict_endpoint_refuses_what_lax_mode_coerces(serve_app: StartServer, client: httpx.Client) -> None:
    server = serve_app(Scale.bind())
    assert client.post(server.url + "/lax", json={"grams": False}).json() == {"grams": 0.0}
    assert client.post(server.url + "/strict", json={"grams": 1}).json() == {"grams": 1.0}
    for wrong in (False, "1"):
        response = client.post(server.url + "/strict", json={"grams": wrong})
        assert response.status_code == 422, response.text
        (error,) = response.json()["error"]["errors"]
        assert (error["loc"], error["type"]) == (["body", "grams"], "float_type")
    response = client.post(server.url + "/strict?exact=yes", json={"grams": 1})
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["loc"] == ["query", "exact"]
    assert client.post(server.url + "/strict?exact=true&unit=1", json={"grams": 1}).status_code == 200


@sk.deployment
class LaxScale:
    @sk.endpoint("/default")
    async def default(self, measure: Measure) -> Measure:
        return measure

    @sk.endpoint("/lax", strict=False)
    async def lax(self, measure: Measure) -> Measure:
        return measure


def test_serve_strict_is_the_default_that_endpoints_may_override(
    serve_app: StartServer, client: httpx.Client
) -> None:
    server = serve_app(LaxScale.bind(), strict=True)
    response = client.post(server.url + "/default", json={"grams": False})
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["type"] == "float_type"
    assert client.post(server.url + "/lax", json={"grams": False}).json() == {"grams": 0.0}


def test_request_parameter_receives_the_raw_request(shop: sk.Server, client: httpx.Client) -> None:
    response = client.put(
        shop.url + "/inspect", params={"a": "1"}, headers={"x-probe": "probe-7"}, content=b"raw body"
    )
    assert response.status_code == 200
    assert response.json() == {
        "method": "PUT",
        "path": "/inspect",
        "query": {"a": "1"},
        "probe": "probe-7",
        "body": "raw body",
    }


def test_bytes_parameter_receives_the_raw_body(shop: sk.Server, client: httpx.Client) -> None:
    payload = bytes(range(256)) * 40
    response = client.post(shop.url + "/digest", content=payload)
    assert response.status_code == 200
    assert response.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"),
    [
        ("/return/dict", 200, "application/json", b'{"kind":"dict","nested":{"ok":true}}'),
        ("/return/list", 200, "application/json", b"[3,1,2]"),
        ("/return/str", 200, "text/plain; charset=utf-8", "plain text ✓".encode()),
        ("/return/bytes", 200, "application/octet-stream", b"\x00\x01\xffbinary"),
        ("/return/model", 200, "application/json", b'{"item":"nut","quantity":3,"total_cents":30}'),
        ("/return/response", 201, "text/plain; charset=utf-8", b"created"),
    ],
)
def test_return_values_render_by_type(
    shop: sk.Server, client: httpx.Client, path: str, status: int, content_type: str, body: bytes
) -> None:
    response = client.get(shop.url + path)
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    assert response.content == body


def test_returned_starlette_response_keeps_its_headers(shop: sk.Server, client: httpx.Client) -> None:
    response = client.get(shop.url + "/return/response")
    assert response.headers["x-custom"] == "yes"


def test_async_generator_streams_chunked_json_lines(shop: sk.Server, client: httpx.Client) -> None:
    with client.stream("GET", shop.url + "/count", params={"n": 5}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        lines = list(response.iter_lines())
    assert [json.loads(line) for line in lines if line] == [{"i": i, "square": i * i} for i in range(5)]


def test_async_generator_streams_server_sent_events_when_asked(shop: sk.Server, client: httpx.Client) -> None:
    with client.stream(
        "GET", shop.url + "/count", params={"n": 3}, headers={"accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [event for event in text.split("\n\n") if event]
    assert events == [f'data: {{"i":{i},"square":{i * i}}}' for i in range(3)]


@pytest.fixture
def raw_echo(serve_app: StartServer) -> sk.Server:
    return serve_app(RawEcho.bind())


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/", "/submit", "/a/b/c"])
def test_raw_call_class_serves_every_method_on_any_path(
    raw_echo: sk.Server, client: httpx.Client, method: str, path: str
) -> None:
    content = b"" if method in ("GET", "DELETE") else f"{method} body".encode()
    response = client.request(method, raw_echo.url + path, params={"x": "1"}, content=content)
    assert response.status_code == 200, response.text
    assert response.json() == {"method": method, "path": path, "query": "x=1", "body": content.decode()}


def test_raw_call_class_leaves_builtin_routes_to_servekit(raw_echo: sk.Server, client: httpx.Client) -> None:
    assert client.get(raw_echo.url + "/healthz").json() == {"status": "ok"}
    assert client.get(raw_echo.url + "/-/status").json()["ingress"] == "RawEcho"


def test_function_deployment_is_served_at_post_root(serve_app: StartServer, client: httpx.Client) -> None:
    server = serve_app(double.bind())
    response = client.post(server.url + "/", json={"x": 21})
    assert response.status_code == 200
    assert response.json() == {"doubled": 42}
    assert client.get(server.url + "/").status_code == 405


def test_mounted_starlette_app_reaches_the_instance_and_its_handles(
    serve_app: StartServer, client: httpx.Client
) -> None:
    server = serve_app(Gateway.bind(Upper.bind()))
    first = client.post(server.url + "/shout", json={"text": "quiet please"})
    second = client.post(server.url + "/shout", json={"text": "again"})
    assert first.status_code == 200
    assert first.json() == {"shouted": "QUIET PLEASE", "calls": 1}
    assert second.json() == {"shouted": "AGAIN", "calls": 2}
    assert client.get(server.url + "/who/x/y").text == "gateway at /who/x/y"
    assert client.get(server.url + "/healthz").json() == {"status": "ok"}


async def test_graph_with_batching_answers_every_concurrent_request_correctly(
    serve_app: StartServer, async_client: httpx.AsyncClient
) -> None:
    server = serve_app(ScoreApi.bind(Scorer.bind(Embedder.bind())))
    texts = [f"request number {i} " + "z" * (i % 7) for i in range(48)]
    responses = await asyncio.gather(
        *(async_client.post(server.url + "/score", json={"text": text}) for text in texts)
    )
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json() == {"text": text, "score": 2 * checksum(text) + len(text)}
    status = (await async_client.get(server.url + "/-/status")).json()
    assert set(status["deployments"]) == {"ScoreApi", "Scorer", "Embedder"}
    [replica] = status["deployments"]["Embedder"]["replicas"]
    batching = replica["batching"]["embed"]
    assert batching["items"] == len(texts)
    assert batching["mean_batch_size"] > 1
    assert batching["batches"] < len(texts)
    assert max(int(size) for size in batching["sizes"]) <= 16


def test_health_and_readiness_routes(shop: sk.Server, client: httpx.Client) -> None:
    health = client.get(shop.url + "/healthz")
    ready = client.get(shop.url + "/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "state": "running"})


def test_status_lists_each_deployment_with_replicas_load_and_version(
    shop: sk.Server, client: httpx.Client
) -> None:
    status = client.get(shop.url + "/-/status").json()
    assert (status["state"], status["ready"], status["ingress"]) == ("running", True, "Shop")
    shop_status = status["deployments"]["Shop"]
    assert shop_status["version"] == "2024-06-01"
    assert (shop_status["target_replicas"], shop_status["running_replicas"]) == (2, 2)
    assert len(shop_status["replicas"]) == 2
    assert len({replica["id"] for replica in shop_status["replicas"]}) == 2
    assert (shop_status["ongoing"], shop_status["queued"]) == (0, 0)


async def test_status_counts_requests_in_flight(
    serve_app: StartServer, async_client: httpx.AsyncClient
) -> None:
    gate = threading.Event()
    server = serve_app(Waiter.bind(gate))
    tasks = [asyncio.create_task(async_client.get(server.url + "/wait")) for _ in range(3)]
    try:
        seen = None
        for _ in range(250):  # bounded: at most ~5 s
            seen = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Waiter"]
            if seen["ongoing"] == 3:
                break
            await asyncio.sleep(0.02)
        assert seen is not None
        assert (seen["ongoing"], seen["queued"]) == (3, 0)
        assert seen["replicas"][0]["ongoing"] == 3
    finally:
        gate.set()
    assert [r.text for r in await asyncio.gather(*tasks)] == ["done"] * 3
    after = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Waiter"]
    assert after["ongoing"] == 0


def test_openapi_describes_paths_body_models_and_parameters(shop: sk.Server, client: httpx.Client) -> None:
    document = client.get(shop.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"] == "2024-06-01"
    paths = document["paths"]
    assert set(paths["/inspect"]) == {"post", "put"}
    assert set(paths["/items/{item_id}"]) == {"get"}
    order = paths["/orders"]["post"]
    assert order["summary"] == "Place an order."
    body_schema = order["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/Order"}
    schemas = document["components"]["schemas"]
    assert set(schemas["Order"]["properties"]) == {"item", "quantity"}
    assert sorted(schemas["Order"]["required"]) == ["item", "quantity"]
    ok_schema = order["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema == {"$ref": "#/components/schemas/Receipt"}
    assert "Receipt" in schemas
    parameters = {p["name"]: p for p in paths["/items/{item_id}"]["get"]["parameters"]}
    assert parameters["item_id"]["in"] == "path"
    assert parameters["item_id"]["required"] is True
    assert parameters["item_id"]["schema"]["type"] == "integer"
    assert (parameters["detail"]["in"], parameters["detail"]["required"]) == ("query", False)
    assert parameters["detail"]["schema"]["type"] == "boolean"
    assert (parameters["limit"]["in"], parameters["limit"]["schema"]["default"]) == ("query", 10)


def test_serve_can_be_started_stopped_and_started_again(client: httpx.Client) -> None:
    first = sk.serve(double.bind(), port=0, blocking=False)
    try:
        assert client.post(first.url + "/", json={"x": 1}).json() == {"doubled": 2}
    finally:
        first.shutdown(grace_s=2)
    with pytest.raises(httpx.ConnectError):
        httpx.post(first.url + "/", json={"x": 1}, timeout=5)
    with sk.serve(double.bind(), port=0, blocking=False) as second:
        assert second.port > 0
        assert second.url == f"http://127.0.0.1:{second.port}"
        assert client.post(second.url + "/", json={"x": 2}).json() == {"doubled": 4}
        assert client.get(second.url + "/readyz").json()["ready"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(second.url + "/healthz", timeout=5)
