"""HTTP the same on every backend (`shop` is served by the local server and by Ray Serve's proxy):
routes, typed parameters, rendering, streaming, built-in routes, and one error body shape for
every status servekit produces."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import behaviour_apps as apps
import httpx
import pytest
from behaviour_support import ServedShop
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.integration


def assert_error_body(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The one error shape, `{"error": {"type", "message", ...}}`; returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert error["type"] == error_type
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    return dict(error)


def test_pydantic_body_in_model_out(shop: ServedShop, client: httpx.Client) -> None:
    response = client.post(shop.url + "/items", json={"name": "bolt", "quantity": 4})
    assert response.status_code == 200
    assert response.json() == {"name": "bolt", "quantity": 4, "total_cents": 1000}


def test_an_async_job_is_accepted_polled_and_rendered_like_the_endpoint(
    shop: ServedShop, client: httpx.Client, wait_until: Any
) -> None:
    response = client.post(shop.url + "/report", json={"name": "nut", "quantity": 2})
    assert response.status_code == 202, response.text
    location = response.headers["location"]

    def finished() -> bool:
        return client.get(shop.url + location).json()["state"] in ("succeeded", "failed")

    wait_until(finished, "the job to finish")
    status = client.get(shop.url + location).json()
    assert (status["state"], status["attempts"], status["progress"]) == ("succeeded", 1, 1.0)
    assert client.get(shop.url + location + "/result").json() == {
        "name": "nut",
        "quantity": 2,
        "total_cents": 500,
    }
    assert_error_body(client.get(shop.url + "/-/jobs/unknown"), 404, "job_not_found")


def test_path_and_query_parameters_are_typed(shop: ServedShop, client: httpx.Client) -> None:
    response = client.get(shop.url + "/items/7", params={"verbose": "true"})
    assert response.json() == {"item_id": 7, "verbose": True}
    assert client.get(shop.url + "/items/8").json() == {"item_id": 8, "verbose": False}


def test_raw_bytes_body_and_a_starlette_response(shop: ServedShop, client: httpx.Client) -> None:
    assert client.post(shop.url + "/upload", content=b"x" * 100).json() == {"size": 100}
    plain = client.get(shop.url + "/plain")
    assert plain.text == "plain ✓"
    assert plain.headers["x-served-by"] == "shop"


def test_a_generator_endpoint_streams_json_lines(shop: ServedShop, client: httpx.Client) -> None:
    response = client.get(shop.url + "/events", params={"n": 3})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"i": 0, "square": 0}, {"i": 1, "square": 1}, {"i": 2, "square": 4}]


def test_a_generator_endpoint_streams_server_sent_events_when_asked(
    shop: ServedShop, client: httpx.Client
) -> None:
    with client.stream(
        "GET", shop.url + "/events", params={"n": 2}, headers={"accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert [json.loads(event.removeprefix("data: ")) for event in events] == [
        {"i": 0, "square": 0},
        {"i": 1, "square": 1},
    ]


def test_a_stream_without_a_first_chunk_in_time_is_504(shop: ServedShop, client: httpx.Client) -> None:
    error = assert_error_body(client.get(shop.url + "/drip", params={"count": 0}), 504, "timeout")
    assert "first chunk of drip()" in error["message"]


def test_a_stream_that_falls_silent_ends_with_a_timeout_event(shop: ServedShop, client: httpx.Client) -> None:
    with client.stream(
        "GET", shop.url + "/drip", params={"count": 2}, headers={"accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[:2] == ['data: {"i":0}', 'data: {"i":1}']
    assert lines[2] == "event: error"
    error = json.loads(lines[3].removeprefix("data: "))["error"]
    assert error["type"] == "timeout"
    assert error["status"] == 504
    assert "after chunk 2 of drip()" in error["message"]


def test_builtin_health_readiness_and_status(shop: ServedShop, client: httpx.Client) -> None:
    assert client.get(shop.url + "/healthz").json() == {"status": "ok"}
    ready = client.get(shop.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    status = client.get(shop.url + "/-/status").json()
    assert status["ready"] is True
    assert set(status["deployments"]) == {"Shop", "Sleeper"}
    for deployment in status["deployments"].values():
        assert deployment["running_replicas"] == 1
        assert len(deployment["replicas"]) == 1


def test_openapi_describes_the_endpoints_and_their_models(shop: ServedShop, client: httpx.Client) -> None:
    document = client.get(shop.url + "/openapi.json").json()
    assert {"/items", "/items/{item_id}", "/upload", "/events"} <= set(document["paths"])
    create = document["paths"]["/items"]["post"]
    assert create["summary"] == "Price an item."
    schemas = document["components"]["schemas"]
    assert {"Item", "Receipt"} <= set(schemas)
    assert schemas["Item"]["required"] == ["name", "quantity"]


def test_interactive_docs_are_served_with_their_assets(shop: ServedShop, client: httpx.Client) -> None:
    page = client.get(shop.url + "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-openapi-url="/openapi.json"' in page.text
    bundle = client.get(shop.url + "/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert client.get(shop.url + "/docs/swagger-ui.css").headers["content-type"].startswith("text/css")


ERROR_CASES = [
    pytest.param(
        "POST", "/items", {"content": b'{"name": "bolt", '}, 400, "bad_request", id="400-malformed-json"
    ),
    pytest.param("GET", "/no/such/path", {}, 404, "not_found", id="404-unknown-path"),
    pytest.param("DELETE", "/items", {}, 405, "method_not_allowed", id="405-wrong-method"),
    pytest.param(
        "POST", "/upload", {"content": b"x" * (apps.BODY_LIMIT + 1)}, 413, "payload_too_large", id="413"
    ),
    pytest.param("POST", "/items", {"json": {"name": "bolt"}}, 422, "validation_error", id="422-body"),
    pytest.param("GET", "/items/seven", {}, 422, "validation_error", id="422-path"),
    pytest.param("GET", "/items/7?verbose=perhaps", {}, 422, "validation_error", id="422-query"),
    pytest.param("GET", "/boom", {}, 500, "internal_error", id="500-user-code"),
    pytest.param("GET", "/timeout", {}, 504, "timeout", id="504-request-timeout"),
]


@pytest.mark.parametrize(("method", "path", "send", "status", "error_type"), ERROR_CASES)
def test_every_error_status_has_the_one_body_shape(
    shop: ServedShop,
    client: httpx.Client,
    method: str,
    path: str,
    send: dict[str, Any],
    status: int,
    error_type: str,
) -> None:
    response = client.request(method, shop.url + path, **send)
    assert_error_body(response, status, error_type)
    assert_documented(client.get(shop.url + "/openapi.json").json(), path.partition("?")[0], response)


def assert_documented(document: dict[str, Any], path: str, response: httpx.Response) -> None:
    """On a documented path, `/openapi.json` lists the response's status, with the error schema."""
    templates = [t for t in document["paths"] if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", t), path)]
    if not templates:
        return  # an unknown path: no route to document it on
    operations = document["paths"][templates[0]]
    method = response.request.method.lower()
    declared = [operations[method]] if method in operations else list(operations.values())
    status = str(response.status_code)
    assert any(status in operation["responses"] for operation in declared), (path, status)
    schema = {"$ref": "#/components/schemas/Error"}
    Draft202012Validator({"allOf": [schema], "components": document["components"]}).validate(response.json())


def test_error_details_name_the_problem(shop: ServedShop, client: httpx.Client) -> None:
    invalid = assert_error_body(
        client.post(shop.url + "/items", json={"name": "bolt", "quantity": "many"}), 422, "validation_error"
    )
    assert [e["loc"] for e in invalid["errors"]] == [["body", "quantity"]]
    assert invalid["errors"][0]["type"] == "int_parsing"
    wrong_method = client.delete(shop.url + "/items")
    assert wrong_method.headers["allow"] == "POST"
    too_large = assert_error_body(
        client.post(shop.url + "/upload", content=b"x" * 4096), 413, "payload_too_large"
    )
    assert too_large["limit_bytes"] == apps.BODY_LIMIT
    timeout = assert_error_body(client.get(shop.url + "/timeout"), 504, "timeout")
    assert "request_timeout_s=0.3" in timeout["message"]
    assert "'Sleeper'" in timeout["message"]


def test_a_chunked_body_over_the_limit_is_413(shop: ServedShop, client: httpx.Client) -> None:
    def chunks() -> Any:
        for _ in range(16):
            yield b"x" * 256

    response = client.post(shop.url + "/upload", content=chunks())
    error = assert_error_body(response, 413, "payload_too_large")
    assert error["limit_bytes"] == apps.BODY_LIMIT


def test_a_500_has_an_error_id_and_no_traceback_or_secret(shop: ServedShop, client: httpx.Client) -> None:
    ids = set()
    for _ in range(2):
        response = client.get(shop.url + "/boom")
        error = assert_error_body(response, 500, "internal_error")
        assert error["error_id"] in error["message"]
        assert "Traceback" not in response.text
        assert apps.SECRET not in response.text
        ids.add(error["error_id"])
    assert len(ids) == 2


async def _until(condition: Any, what: str) -> None:
    for _ in range(500):  # bounded: at most ~10 s
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_overload_is_refused_early_with_503_and_retry_after(
    shop: ServedShop, async_client: httpx.AsyncClient
) -> None:
    gate = f"overload-{shop.backend}"
    tasks = [
        asyncio.create_task(async_client.get(shop.url + "/hold", params={"name": gate})) for _ in range(5)
    ]
    try:
        # max_ongoing_requests=2 run, max_queued_requests=1 waits, the other two are refused at once
        await _until(lambda: _done(tasks, 2), "two refusals")
        status = (await async_client.get(shop.url + "/-/status")).json()["deployments"]["Shop"]
        assert (status["ongoing"], status["queued"]) == (2, 1)
    finally:
        shop.open_gate(gate)
    responses = await asyncio.gather(*tasks)
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) == 2, [r.status_code for r in responses]
    assert [r.json() for r in responses if r.status_code == 200] == [{"released": gate}] * 3
    for response in refused:
        error = assert_error_body(response, 503, "overloaded")
        assert int(response.headers["retry-after"]) >= 1
        assert "max_queued_requests=1" in error["message"]


async def _done(tasks: list[asyncio.Task[httpx.Response]], count: int) -> bool:
    return sum(task.done() for task in tasks) >= count


async def test_failing_requests_never_affect_concurrent_good_ones(
    shop: ServedShop, async_client: httpx.AsyncClient
) -> None:
    url = shop.url
    for index in range(6):
        good, boom, invalid, missing = await asyncio.gather(
            async_client.post(url + "/items", json={"name": f"n{index}", "quantity": index}),
            async_client.get(url + "/boom"),  # the Shop admits these two at once
            async_client.post(url + "/items", json={"name": "no quantity"}),  # refused before admission
            async_client.get(url + f"/nowhere/{index}"),
        )
        assert good.json() == {"name": f"n{index}", "quantity": index, "total_cents": index * 250}
        assert [boom.status_code, invalid.status_code, missing.status_code] == [500, 422, 404]
    assert (await async_client.get(url + "/items/3")).json() == {"item_id": 3, "verbose": False}
