"""The served `/openapi.json` tells what the server does: a fuzzer driven by the document finds no
status, header or error body that the document does not declare for the route.

For each documented operation the fuzzer sends a valid request, malformed JSON, a wrong content
type, an oversized body, values of the wrong type, no body, and every method the path does not
take; statuses the fuzzer cannot provoke (500, 503, 504) are provoked on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

import servekit as sk

pytestmark = pytest.mark.integration

BODY_LIMIT = 2048
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Item(BaseModel):
    name: str
    price: float = Field(gt=0)
    tags: list[str] = []


class Error(BaseModel):
    """A user model named like servekit's error schema."""

    code: int


@sk.deployment
class Catalog:
    @sk.endpoint("/items")
    async def create(self, item: Item) -> Item:
        """Add an item."""
        return item

    @sk.endpoint("/items/{item_id}", methods=["GET"])
    async def read(self, item_id: int, currency: str = "EUR", verbose: bool = False) -> dict[str, Any]:
        return {"item_id": item_id, "currency": currency, "verbose": verbose}

    @sk.endpoint("/prices/{item_id:int}", methods=["GET", "PUT"])
    async def price(self, item_id: int, factor: float = 1.0) -> float:
        return item_id * factor

    @sk.endpoint("/pair")
    async def pair(self, first: Item, second: Item) -> list[Item]:
        return [first, second]

    @sk.endpoint("/upload", methods=["PUT"])
    async def upload(self, data: bytes) -> dict[str, int]:
        return {"size": len(data)}

    @sk.endpoint("/events", methods=["GET"])
    async def events(self, n: int = 2) -> AsyncIterator[dict[str, int]]:
        for index in range(min(n, 5)):
            yield {"index": index}

    @sk.endpoint("/report", strict=True)
    async def report(self, error: Error) -> Error:
        if error.code >= 500:
            raise RuntimeError(f"report {error.code} failed")
        return error

    @sk.endpoint("/ping", methods=["GET"])
    async def ping(self) -> str:
        return "pong"


@sk.deployment(max_ongoing_requests=1, max_queued_requests=0, request_timeout_s=2.0)
class Gated:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @sk.endpoint("/hold", methods=["GET"])
    async def hold(self) -> dict[str, bool]:
        for _ in range(500):  # bounded: at most ~5 s
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return {"released": self.gate.is_set()}


@pytest.fixture
def catalog(serve_app: Callable[..., sk.Server]) -> sk.Server:
    return serve_app(Catalog.bind(), max_body_bytes=BODY_LIMIT)


class Contract:
    """The served document, and checks of responses against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = document["components"]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        Draft202012Validator({"allOf": [schema], "components": self.components}).validate(instance)

    def check(self, response: httpx.Response, path: str, methods: list[str]) -> None:
        """`response`'s status is documented for (one of) `methods` at `path`; its body and headers fit."""
        status = str(response.status_code)
        sent = f"{response.request.method} {response.request.url} -> {status} {response.text[:300]}"
        declared = [self.document["paths"][path][m.lower()]["responses"] for m in methods]
        documented = [responses[status] for responses in declared if status in responses]
        assert documented, f"undocumented status: {sent}"
        for answer in documented:
            for header in answer.get("headers", {}):
                assert header.lower() in response.headers, f"{header} missing: {sent}"
            if response.request.method == "HEAD":
                continue  # no body to check
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if schema is not None and response.headers["content-type"].startswith("application/json"):
                self.validate(schema, response.json())
        if response.status_code >= 400 and response.request.method != "HEAD":
            self.validate({"$ref": "#/components/schemas/Error"}, response.json())


def example(contract: Contract, schema: dict[str, Any]) -> Any:
    """A value that fits `schema`."""
    schema = contract.resolve(schema)
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        return example(contract, schema["anyOf"][0])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example(contract, prop) for name, prop in properties.items()}
    if kind == "array":
        return [example(contract, schema.get("items", {}))]
    return {"string": "tea", "integer": 3, "number": 2.5, "boolean": True}.get(str(kind), "x")


def wrong(contract: Contract, schema: dict[str, Any]) -> Any:
    """A value of another JSON type than `schema`'s (objects keep their keys, with wrong values)."""
    schema = contract.resolve(schema)
    if "anyOf" in schema:
        return wrong(contract, schema["anyOf"][0])
    kind = schema.get("type")
    if kind == "object" and schema.get("properties"):
        return {name: wrong(contract, prop) for name, prop in schema["properties"].items()}
    wrong_values = {"string": 7, "integer": "seven", "number": False, "boolean": "perhaps", "array": {"a": 1}}
    return wrong_values.get(str(kind))


def operations(contract: Contract) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in contract.document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def url_for(path: str, operation: dict[str, Any], path_value: str) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", path_value)
    return path


def fuzz_requests(contract: Contract, path: str, operation: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Keyword arguments for `httpx.Client.request` (besides method and url), good and bad."""
    params = [p for p in operation.get("parameters", []) if p["in"] == "query"]
    good_query = {p["name"]: _query_text(example(contract, p["schema"])) for p in params}
    bad_query = {p["name"]: _query_text(wrong(contract, p["schema"])) for p in params}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    good_body = example(contract, body["schema"]) if body else None
    yield {"url": url_for(path, operation, "3"), "params": good_query, "json": good_body}
    yield {"url": url_for(path, operation, "seven"), "params": bad_query}
    yield {"url": url_for(path, operation, "3"), "params": good_query}  # no body
    if body is not None:
        yield {"url": url_for(path, operation, "3"), "json": wrong(contract, body["schema"])}
    for content, kind in (
        (b'{"name": "tea", ', "application/json"),
        (b"name=tea&price=2", "application/x-www-form-urlencoded"),
        (b'{"name": "tea", "price": 2.5}', "text/plain"),
        (b"x" * (BODY_LIMIT + 1), "application/octet-stream"),
    ):
        yield {"url": url_for(path, operation, "3"), "content": content, "headers": {"content-type": kind}}


def _query_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_status_the_fuzzer_provokes_is_documented_with_its_body(
    catalog: sk.Server, client: httpx.Client
) -> None:
    contract = Contract(client.get(catalog.url + "/openapi.json").json())
    seen: dict[str, set[int]] = {}
    for path, method, operation in operations(contract):
        for request in fuzz_requests(contract, path, operation):
            response = client.request(method, catalog.url + request.pop("url"), **request)
            contract.check(response, path, [method])
            seen.setdefault(path, set()).add(response.status_code)
    for path, item in contract.document["paths"].items():
        taken = [method.upper() for method in item]
        for method in set(METHODS) - set(taken) - ({"HEAD"} if "GET" in taken else set()):
            response = client.request(method, catalog.url + url_for(path, item[taken[0].lower()], "3"))
            contract.check(response, path, taken)
            seen.setdefault(path, set()).add(response.status_code)
    # the fuzzer did reach the errors it is meant to find, on the routes that can give them
    assert {200, 400, 405, 413, 422} <= seen["/items"]
    assert {200, 404, 405, 413} <= seen["/prices/{item_id}"]
    assert {200, 405, 413, 422} <= seen["/items/{item_id}"]
    assert {200, 405, 413} <= seen["/healthz"]


def test_user_code_failure_overload_and_timeout_are_documented(
    catalog: sk.Server, serve_app: Callable[..., sk.Server], client: httpx.Client
) -> None:
    contract = Contract(client.get(catalog.url + "/openapi.json").json())
    failed = client.post(catalog.url + "/report", json={"code": 503})
    assert failed.status_code == 500
    contract.check(failed, "/report", ["POST"])

    gate = threading.Event()
    gated = serve_app(Gated.bind(gate))
    gated_contract = Contract(client.get(gated.url + "/openapi.json").json())
    with httpx.Client(timeout=30) as other:
        holder = threading.Thread(target=lambda: other.get(gated.url + "/hold"))
        holder.start()
        try:
            _wait_until(lambda: _ongoing(client, gated, "Gated") == 1, "the held request to run")
            refused = client.get(gated.url + "/hold")
        finally:
            gate.set()
            holder.join(timeout=30)
    assert refused.status_code == 503
    gated_contract.check(refused, "/hold", ["GET"])
    gate.clear()
    timed_out = client.get(gated.url + "/hold")
    gate.set()
    assert timed_out.status_code == 504
    gated_contract.check(timed_out, "/hold", ["GET"])


def _ongoing(client: httpx.Client, server: sk.Server, deployment: str) -> int:
    return int(client.get(server.url + "/-/status").json()["deployments"][deployment]["ongoing"])


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # bounded: at most ~10 s
        if condition():
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_document_is_consistent(catalog: sk.Server, client: httpx.Client) -> None:
    document = client.get(catalog.url + "/openapi.json").json()
    schemas = document["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    refs = set(_refs(document))
    assert refs <= {f"#/components/schemas/{name}" for name in schemas}, refs
    ids = [op["operationId"] for _, _, op in operations(Contract(document))]
    assert len(ids) == len(set(ids)), ids
    # a user model named `Error` keeps its own schema under another name
    assert schemas["ErrorModel"]["properties"] == {"code": {"title": "Code", "type": "integer"}}
    report = document["paths"]["/report"]["post"]
    assert report["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorModel"
    }
    assert report["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert set(document["paths"]["/ping"]["get"]["responses"]) == {"200", "405", "413", "500", "503", "504"}
    assert {"/healthz", "/readyz", "/-/status", "/openapi.json"} <= set(document["paths"])
    assert "Retry-After" in document["paths"]["/items"]["post"]["responses"]["503"]["headers"]
    assert str(BODY_LIMIT) in document["paths"]["/upload"]["put"]["responses"]["413"]["description"]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
