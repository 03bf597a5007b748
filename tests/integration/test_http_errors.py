"""The HTTP error contract on the local server, in detail: each status's own fields, headers and log.

Every status servekit produces (400, 404, 405, 413, 422, 500, 503, 504) having the one shape
`{"error": {"type": str, "message": str, ...}}` on every backend is pinned by the behaviour
suite (`tests/backends/test_behaviour_http.py`); this file adds what only the local server
shows (the 500's log record, gated overload, chunked bodies at the limit).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import servekit as sk

pytestmark = pytest.mark.integration

BODY_LIMIT = 1024
SECRET = "db-password-hunter2"


class Item(BaseModel):
    name: str
    quantity: int


@sk.deployment
class Inventory:
    @sk.endpoint("/items")
    async def create(self, item: Item) -> Item:
        return item

    @sk.endpoint("/items/{item_id}", methods=["GET"])
    async def read(self, item_id: int, verbose: bool = False) -> dict[str, Any]:
        return {"item_id": item_id, "verbose": verbose}

    @sk.endpoint("/upload")
    async def upload(self, data: bytes) -> dict[str, int]:
        return {"size": len(data)}

    @sk.endpoint("/boom", methods=["GET"])
    async def boom(self) -> None:
        raise RuntimeError(f"connection failed with {SECRET}")


@sk.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Bottleneck:
    """Holds every request until the test opens the gate."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @sk.endpoint("/work", methods=["GET"])
    async def work(self, n: int) -> dict[str, int]:
        for _ in range(1000):  # bounded: at most ~10 s
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return {"n": n}


@sk.deployment(max_ongoing_requests=1, max_queued_requests=6)
class Paced:
    """Each request takes `seconds`, then waits until the test opens the gate."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @sk.endpoint("/work", methods=["GET"])
    async def work(self, seconds: float) -> dict[str, float]:
        await asyncio.sleep(seconds)  # the model's work, which sets the rate the queue drains at
        for _ in range(1000):  # bounded: at most ~10 s
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return {"seconds": seconds}


@sk.deployment(request_timeout_s=0.3)
class Sluggish:
    @sk.endpoint("/slow", methods=["GET"])
    async def slow(self) -> str:
        await asyncio.sleep(30)
        return "too late"

    @sk.endpoint("/fast", methods=["GET"])
    async def fast(self) -> str:
        return "quick"


def assert_error_body(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """Check the one error shape and return the `"error"` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == error_type
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    return error


@pytest.fixture
def inventory(serve_app: Callable[..., sk.Server]) -> sk.Server:
    return serve_app(Inventory.bind(), max_body_bytes=BODY_LIMIT)


def _chunks(total: int, size: int = 256) -> Any:
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


def test_malformed_json_is_400_bad_request(inventory: sk.Server, client: httpx.Client) -> None:
    response = client.post(
        inventory.url + "/items", content=b"{not json", headers={"content-type": "application/json"}
    )
    error = assert_error_body(response, 400, "bad_request")
    assert "json" in error["message"].lower()


def test_unknown_path_is_404_naming_method_and_path(inventory: sk.Server, client: httpx.Client) -> None:
    response = client.get(inventory.url + "/no/such/path")
    error = assert_error_body(response, 404, "not_found")
    assert "/no/such/path" in error["message"]


def test_wrong_method_is_405_with_allow_header(inventory: sk.Server, client: httpx.Client) -> None:
    response = client.delete(inventory.url + "/items")
    error = assert_error_body(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert "DELETE" in error["message"]


def test_body_over_limit_by_content_length_is_413_with_limit_in_error(
    inventory: sk.Server, client: httpx.Client
) -> None:
    response = client.post(inventory.url + "/upload", content=b"x" * (BODY_LIMIT + 1))
    error = assert_error_body(response, 413, "payload_too_large")
    assert error["limit_bytes"] == BODY_LIMIT
    assert str(BODY_LIMIT) in error["message"]


def test_chunked_body_over_limit_without_content_length_is_413(
    inventory: sk.Server, client: httpx.Client
) -> None:
    request = client.build_request("POST", inventory.url + "/upload", content=_chunks(4 * BODY_LIMIT))
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = client.send(request)
    error = assert_error_body(response, 413, "payload_too_large")
    assert error["limit_bytes"] == BODY_LIMIT


def test_body_at_limit_is_accepted_chunked_or_not(inventory: sk.Server, client: httpx.Client) -> None:
    plain = client.post(inventory.url + "/upload", content=b"x" * BODY_LIMIT)
    chunked = client.post(inventory.url + "/upload", content=_chunks(BODY_LIMIT))
    assert plain.status_code == 200
    assert plain.json() == {"size": BODY_LIMIT}
    assert chunked.status_code == 200
    assert chunked.json() == {"size": BODY_LIMIT}


def test_body_schema_violation_is_422_with_pydantic_errors_under_body(
    inventory: sk.Server, client: httpx.Client
) -> None:
    response = client.post(inventory.url + "/items", json={"name": "bolt", "quantity": "many"})
    error = assert_error_body(response, 422, "validation_error")
    errors = error["errors"]
    assert isinstance(errors, list)
    assert [e["loc"] for e in errors] == [["body", "quantity"]]
    assert errors[0]["type"] == "int_parsing"
    assert isinstance(errors[0]["msg"], str)
    assert "quantity" in error["message"]


def test_missing_body_field_is_422_listing_each_missing_field(
    inventory: sk.Server, client: httpx.Client
) -> None:
    response = client.post(inventory.url + "/items", json={})
    error = assert_error_body(response, 422, "validation_error")
    assert sorted(tuple(e["loc"]) for e in error["errors"]) == [("body", "name"), ("body", "quantity")]
    assert {e["type"] for e in error["errors"]} == {"missing"}


def test_bad_path_parameter_is_422_with_loc_under_path(inventory: sk.Server, client: httpx.Client) -> None:
    response = client.get(inventory.url + "/items/seven")
    error = assert_error_body(response, 422, "validation_error")
    assert [e["loc"] for e in error["errors"]] == [["path", "item_id"]]


def test_bad_query_parameter_is_422_with_loc_under_query(inventory: sk.Server, client: httpx.Client) -> None:
    response = client.get(inventory.url + "/items/7", params={"verbose": "perhaps"})
    error = assert_error_body(response, 422, "validation_error")
    assert [e["loc"] for e in error["errors"]] == [["query", "verbose"]]


def test_exception_in_user_code_is_500_with_error_id_logged_and_no_traceback(
    inventory: sk.Server, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="servekit.http")
    response = client.get(inventory.url + "/boom")
    error = assert_error_body(response, 500, "internal_error")
    error_id = error["error_id"]
    assert isinstance(error_id, str)
    assert error_id
    assert error_id in error["message"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert SECRET not in response.text
    logged = [r for r in caplog.records if r.name == "servekit.http" and error_id in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])


def test_a_client_leaving_mid_body_is_no_server_error(
    inventory: sk.Server,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    wait_until: Callable[..., None],
) -> None:
    """A client that closes its connection before its body is complete (a load generator
    stopping, a browser tab closing) is logged at debug level, not as a 500 with a traceback."""
    caplog.set_level(logging.DEBUG, logger="servekit.http")
    host, port = inventory.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(
            b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"name": "pa'
        )
    wait_until(
        lambda: any("client disconnected" in r.getMessage() for r in caplog.records),
        "the server to notice the client left",
    )
    assert not [r for r in caplog.records if r.name == "servekit.http" and r.levelno >= logging.WARNING]
    assert client.get(inventory.url + "/items/1").status_code != 500  # and it serves on


def test_each_500_gets_its_own_error_id(inventory: sk.Server, client: httpx.Client) -> None:
    ids = {client.get(inventory.url + "/boom").json()["error"]["error_id"] for _ in range(3)}
    assert len(ids) == 3


async def _wait_until_done(tasks: list[asyncio.Task[httpx.Response]], count: int) -> None:
    for _ in range(500):  # bounded: at most ~10 s
        if sum(task.done() for task in tasks) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} of {len(tasks)} requests finished")


async def test_overload_is_503_with_retry_after_and_admitted_requests_succeed(
    serve_app: Callable[..., sk.Server], async_client: httpx.AsyncClient
) -> None:
    gate = threading.Event()
    server = serve_app(Bottleneck.bind(gate))
    tasks = [asyncio.create_task(async_client.get(server.url + "/work", params={"n": n})) for n in range(5)]
    try:
        # one request runs, one waits in the queue, the other three must be refused right away
        await _wait_until_done(tasks, 3)
        status = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Bottleneck"]
        assert (status["ongoing"], status["queued"]) == (1, 1)
    finally:
        gate.set()
    responses = await asyncio.gather(*tasks)
    refused = [r for r in responses if r.status_code == 503]
    admitted = [r for r in responses if r.status_code == 200]
    assert len(refused) == 3
    assert len(admitted) == 2
    for response in refused:
        error = assert_error_body(response, 503, "overloaded")
        assert int(response.headers["retry-after"]) >= 1
        assert "max_queued_requests=1" in error["message"]
    for n, response in enumerate(responses):
        if response.status_code == 200:
            assert response.json() == {"n": n}


async def test_overload_retry_after_is_the_time_the_queue_takes_to_drain(
    serve_app: Callable[..., sk.Server], async_client: httpx.AsyncClient
) -> None:
    gate = threading.Event()
    gate.set()
    server = serve_app(Paced.bind(gate))
    # one request of 0.5 s: the queue drains at most 2 requests per second
    assert (await async_client.get(server.url + "/work", params={"seconds": 0.5})).status_code == 200
    gate.clear()
    tasks = [
        asyncio.create_task(async_client.get(server.url + "/work", params={"seconds": 0})) for _ in range(8)
    ]
    try:
        await _wait_until_done(tasks, 1)  # one runs, six wait in the queue, one is refused
    finally:
        gate.set()
    refused = [r for r in await asyncio.gather(*tasks) if r.status_code == 503]
    assert len(refused) == 1
    error = assert_error_body(refused[0], 503, "overloaded")
    retry_after = int(refused[0].headers["retry-after"])
    assert 3 <= retry_after <= 60  # six queued at no more than 2 per second
    assert error["retry_after_s"] == retry_after


async def test_request_over_timeout_is_504_and_its_work_is_released(
    serve_app: Callable[..., sk.Server], async_client: httpx.AsyncClient
) -> None:
    server = serve_app(Sluggish.bind())
    response = await async_client.get(server.url + "/slow")
    error = assert_error_body(response, 504, "timeout")
    assert "request_timeout_s=0.3" in error["message"]
    status = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Sluggish"]
    assert status["ongoing"] == 0
    fast = await async_client.get(server.url + "/fast")
    assert fast.status_code == 200
    assert fast.text == "quick"


def _mixed_requests(server: sk.Server, http: httpx.AsyncClient, index: int) -> list[tuple[str, Any]]:
    """One good request and one of each kind of failing request, as (kind, coroutine)."""
    return [
        ("good", http.post(server.url + "/items", json={"name": f"item-{index}", "quantity": index})),
        ("boom", http.get(server.url + "/boom")),
        ("invalid", http.post(server.url + "/items", json={"name": f"item-{index}"})),
        ("malformed", http.post(server.url + "/items", content=b"{")),
        ("missing", http.get(server.url + f"/nowhere/{index}")),
        ("too-large", http.post(server.url + "/upload", content=b"x" * (BODY_LIMIT * 2))),
    ]


async def test_failing_requests_never_affect_concurrent_good_ones(
    inventory: sk.Server, async_client: httpx.AsyncClient
) -> None:
    expected_status = {
        "good": 200,
        "boom": 500,
        "invalid": 422,
        "malformed": 400,
        "missing": 404,
        "too-large": 413,
    }
    calls = [
        (index, kind, call)
        for index in range(12)
        for kind, call in _mixed_requests(inventory, async_client, index)
    ]
    responses = await asyncio.gather(*(call for _, _, call in calls))
    for (index, kind, _), response in zip(calls, responses, strict=True):
        assert response.status_code == expected_status[kind], (kind, response.text)
        if kind == "good":
            assert response.json() == {"name": f"item-{index}", "quantity": index}
        else:
            assert list(response.json()) == ["error"]
    after = await async_client.get(inventory.url + "/items/3")
    assert after.json() == {"item_id": 3, "verbose": False}
