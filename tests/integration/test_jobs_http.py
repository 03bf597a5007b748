"""Async jobs over real HTTP on 127.0.0.1: submit, poll, result, cancel, list, limits, webhooks.

The apps run in-process (one test also in worker processes), so a test opens gates that jobs
wait on; every wait is bounded (`wait_until`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

GATE = threading.Event()
"""Jobs of `Gated` wait on it: a test opens it when it has seen them queued or running."""
STARTED: list[str] = []
CANCELLED: list[str] = []
ATTEMPTS: dict[str, int] = {}


@sk.deployment
class Gated:
    @sk.endpoint("/work", mode="async", jobs=sk.JobOptions(concurrency=1, max_queued=3))
    async def work(self, name: str) -> dict[str, Any]:
        STARTED.append(name)
        sk.job_context().progress(0.25)
        try:
            await asyncio.to_thread(GATE.wait, 30)
        except asyncio.CancelledError:
            CANCELLED.append(name)
            raise
        return {"name": name, "attempt": sk.job_context().attempt}

    @sk.endpoint("/urgent", mode="async", jobs=sk.JobOptions(priority=10))
    async def urgent(self, name: str) -> dict[str, Any]:
        STARTED.append(name)
        return {"name": name}

    @sk.endpoint("/blocking")
    def blocking(self, name: str) -> str:
        STARTED.append(name)
        GATE.wait(30)
        return f"done {name}"

    @sk.endpoint("/flaky", mode="async", jobs=sk.JobOptions(retries=2, backoff_s=0.05))
    def flaky(self, name: str) -> dict[str, Any]:
        ATTEMPTS[name] = ATTEMPTS.get(name, 0) + 1
        if ATTEMPTS[name] < 2:
            raise RuntimeError("first attempts fail")
        return {"name": name, "attempts": ATTEMPTS[name]}

    @sk.endpoint("/broken", mode="async", jobs=sk.JobOptions(retries=1, backoff_s=0.01))
    def broken(self) -> None:
        raise ValueError("always")

    @sk.endpoint("/add")
    def add(self, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}


@pytest.fixture
def gated(serve_app: Callable[..., sk.Server]) -> Iterator[sk.Server]:
    GATE.clear()
    STARTED.clear()
    CANCELLED.clear()
    ATTEMPTS.clear()
    server = serve_app(Gated.bind())
    yield server
    GATE.set()


def _state(client: httpx.Client, server: sk.Server, location: str) -> str:
    return str(client.get(server.url + location).json()["state"])


def _finished(client: httpx.Client, server: sk.Server, location: str) -> Callable[[], bool]:
    return lambda: _state(client, server, location) in ("succeeded", "failed", "cancelled")


def test_async_endpoint_answers_202_then_status_progress_and_result(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    response = client.post(gated.url + "/work", params={"name": "a"})
    assert response.status_code == 202
    location = response.headers["location"]
    assert location == f"/-/jobs/{response.json()['id']}"
    wait_until(lambda: client.get(gated.url + location).json()["progress"] == 0.25, "progress")
    early = client.get(gated.url + location + "/result")
    assert early.status_code == 409
    assert early.json()["error"]["state"] == "running"
    GATE.set()
    wait_until(_finished(client, gated, location), "the job to finish")
    status = client.get(gated.url + location).json()
    assert status["state"] == "succeeded"
    assert status["attempts"] == 1
    assert status["started_at"] is not None
    assert status["finished_at"] is not None
    assert client.get(gated.url + location + "/result").json() == {"name": "a", "attempt": 1}
    assert client.get(gated.url + "/-/jobs/no-such-job").status_code == 404
    assert client.get(gated.url + "/-/jobs/no-such-job/result").status_code == 404


def test_prefer_respond_async_makes_any_endpoint_a_job_with_its_normal_rendering(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    assert client.post(gated.url + "/add", params={"a": 1, "b": 2}).json() == {"sum": 3}
    response = client.post(gated.url + "/add", params={"a": 1, "b": 2}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    location = response.headers["location"]
    wait_until(_finished(client, gated, location), "the job to finish")
    result = client.get(gated.url + location + "/result")
    assert (result.status_code, result.json()) == (200, {"sum": 3})
    bad = client.post(gated.url + "/add", params={"a": "x", "b": 2}, headers={"Prefer": "respond-async"})
    assert bad.status_code == 422  # refused at once: nothing stored


def test_cancel_stops_a_running_task_and_discards_a_thread_result(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    task_job = client.post(gated.url + "/work", params={"name": "t"}).headers["location"]
    wait_until(lambda: "t" in STARTED, "the async job to start")
    cancelled = client.delete(gated.url + task_job)
    assert cancelled.json()["state"] == "cancelled"
    wait_until(lambda: "t" in CANCELLED, "the task to be cancelled")
    thread_job = client.post(
        gated.url + "/blocking", params={"name": "s"}, headers={"Prefer": "respond-async"}
    ).headers["location"]
    wait_until(lambda: "s" in STARTED, "the thread job to start")
    assert client.delete(gated.url + thread_job).json()["state"] == "cancelled"
    GATE.set()  # the thread finishes, its result is dropped
    ran = client.post(gated.url + "/urgent", params={"name": "after"}).headers["location"]
    wait_until(_finished(client, gated, ran), "a later job")
    assert _state(client, gated, thread_job) == "cancelled"
    result = client.get(gated.url + thread_job + "/result")
    assert (result.status_code, result.json()["error"]["state"]) == (409, "cancelled")


def test_full_queue_is_refused_with_503_and_nothing_stored(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    accepted = [client.post(gated.url + "/work", params={"name": f"q{i}"}) for i in range(3)]
    assert [r.status_code for r in accepted] == [202, 202, 202]
    refused = client.post(gated.url + "/work", params={"name": "over"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "job_queue_full"
    listed = client.get(gated.url + "/-/jobs").json()["jobs"]
    assert len(listed) == 3
    GATE.set()
    for response in accepted:
        wait_until(_finished(client, gated, response.headers["location"]), "the queued jobs")


def test_concurrency_limit_and_priority_order_the_queue(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    client.post(gated.url + "/work", params={"name": "first"})
    wait_until(lambda: STARTED == ["first"], "the first job to run")
    second = client.post(gated.url + "/work", params={"name": "second"}).headers["location"]
    urgent = client.post(gated.url + "/urgent", params={"name": "urgent"}).headers["location"]
    wait_until(_finished(client, gated, urgent), "the urgent job")
    assert _state(client, gated, second) == "queued"  # concurrency=1: waits for "first"
    GATE.set()
    wait_until(_finished(client, gated, second), "the second job")
    assert STARTED == ["first", "urgent", "second"]


def test_retries_with_backoff_then_a_final_failure_keeps_its_error(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    flaky = client.post(gated.url + "/flaky", params={"name": "f"}).headers["location"]
    wait_until(_finished(client, gated, flaky), "the flaky job")
    status = client.get(gated.url + flaky).json()
    assert (status["state"], status["attempts"]) == ("succeeded", 2)
    assert client.get(gated.url + flaky + "/result").json() == {"name": "f", "attempts": 2}
    broken = client.post(gated.url + "/broken").headers["location"]
    wait_until(_finished(client, gated, broken), "the broken job")
    status = client.get(gated.url + broken).json()
    assert (status["state"], status["attempts"]) == ("failed", 2)
    assert status["error"]["type"] == "internal_error"
    result = client.get(gated.url + broken + "/result")
    assert result.status_code == 500
    assert "ValueError" in result.json()["error"]["message"]


def test_idempotency_key_and_paginated_listing(
    gated: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    key = {"Idempotency-Key": "order-7"}
    first = client.post(gated.url + "/urgent", params={"name": "k"}, headers=key)
    again = client.post(gated.url + "/urgent", params={"name": "k"}, headers=key)
    assert first.headers["location"] == again.headers["location"]
    for i in range(4):
        client.post(gated.url + "/urgent", params={"name": f"n{i}"})
    seen: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page = client.get(gated.url + "/-/jobs", params={"limit": 2, "cursor": cursor}).json()
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5
    wait_until(lambda: len(client.get(gated.url + "/-/jobs?state=succeeded").json()["jobs"]) == 5, "all done")
    for query, status in (("state=done", 400), ("limit=0", 400), ("limit=x", 400), ("cursor=abc", 400)):
        assert client.get(gated.url + "/-/jobs?" + query).status_code == status
    paths = client.get(gated.url + "/openapi.json").json()["paths"]
    assert {"/-/jobs", "/-/jobs/{job_id}", "/-/jobs/{job_id}/result"} <= set(paths)
    assert set(paths["/-/jobs/{job_id}"]) == {"get", "delete"}
    assert "202" in paths["/urgent"]["post"]["responses"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Fails the first delivery with 500, accepts the rest; keeps what it got."""

    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(500 if len(self.received) == 1 else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_is_signed_and_retried(
    serve_app: Callable[..., sk.Server], receiver: str, wait_until: Callable[..., None]
) -> None:
    options = sk.JobOptions(webhook_url=receiver, webhook_secret="s3cret")

    @sk.deployment
    class Hooked:
        @sk.endpoint("/hooked", mode="async", jobs=options)
        def hooked(self) -> str:
            return "ok"

    server = serve_app(Hooked.bind())
    job_id = httpx.post(server.url + "/hooked").json()["id"]
    wait_until(lambda: len(_Receiver.received) == 2, "the webhook's retry")
    for headers, body in _Receiver.received:
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Servekit-Signature"] == expected
        assert json.loads(body)["id"] == job_id
        assert json.loads(body)["state"] == "succeeded"


@sk.deployment(isolation="process")
class Worker:
    def double(self, x: int) -> int:
        return 2 * x

    @sk.endpoint("/double", mode="async")
    def double_endpoint(self, x: int) -> dict[str, int]:
        return {"double": 2 * x}


async def test_python_submit_and_http_jobs_run_on_process_replicas(
    serve_app: Callable[..., sk.Server],
    async_client: httpx.AsyncClient,
    client: httpx.Client,
    await_until: Callable[..., Any],
) -> None:
    server = serve_app(Worker.bind())
    job = server.handle.double.submit(21)
    assert await job == 42
    location = (await async_client.post(server.url + "/double", params={"x": 4})).headers["location"]
    status = await async_client.get(server.url + f"/-/jobs/{job.id}")
    assert status.json()["state"] == "succeeded"
    assert (await async_client.get(server.url + f"/-/jobs/{job.id}/result")).json() == 42
    waited = server.handle.double_endpoint.submit(4)  # the endpoint's method, from Python
    assert await waited == {"double": 8}
    await await_until(lambda: _state(client, server, location) == "succeeded", "the HTTP job")
    assert (await async_client.get(server.url + location + "/result")).json() == {"double": 8}


def test_a_data_dir_that_cannot_be_made_is_reported_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(sk.errors.JobStoreError, match="cannot be written"):
        sk.run(Worker.bind(), data_dir=str(tmp_path / "file" / "data"))
