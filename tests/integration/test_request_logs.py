"""Request ids and logs on real servers: `x-request-id` on every response (every error path too),
the id in 5xx bodies, and `servekit serve --log-format json --access-log` writing one JSON object
per line, from the server and from its worker processes, each with its request and trace ids."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class Unserialisable:
    pass


@sk.deployment(request_timeout_s=0.2)
class Errors:
    @sk.endpoint("/ok", methods=["GET"])
    async def ok(self, n: int) -> dict[str, int]:
        return {"n": n}

    @sk.endpoint("/boom", methods=["GET"])
    async def boom(self) -> None:
        raise RuntimeError("boom")

    @sk.endpoint("/odd", methods=["GET"])
    async def odd(self) -> Any:
        return Unserialisable()  # fails while rendering, outside every handler

    @sk.endpoint("/slow", methods=["GET"])
    async def slow(self) -> None:
        await asyncio.sleep(5)


def test_every_response_carries_x_request_id_and_every_5xx_body_the_same_id(
    serve_app: Callable[..., sk.Server], client: httpx.Client
) -> None:
    server = serve_app(Errors.bind(), max_body_bytes=64)
    url = server.url
    responses = {
        200: client.get(url + "/ok", params={"n": 1}),
        404: client.get(url + "/missing"),
        405: client.post(url + "/ok"),
        413: client.post(url + "/missing", content=b"x" * 65),
        422: client.get(url + "/ok", params={"n": "many"}),
        500: client.get(url + "/boom"),
        504: client.get(url + "/slow"),
    }
    unrendered = client.get(url + "/odd")
    for status, response in [*responses.items(), (500, unrendered)]:
        assert response.status_code == status, response.text
        assert VALID_ID.match(response.headers["x-request-id"]), response.headers
        if status >= 500:
            assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
        elif status >= 400:
            assert "request_id" not in response.json()["error"]
    assert unrendered.json()["error"]["type"] == "internal_error"
    own = client.get(url + "/boom", headers={"x-request-id": "client-id-7"})
    assert own.headers["x-request-id"] == own.json()["error"]["request_id"] == "client-id-7"


APP = """
import logging

import servekit as sk

log = logging.getLogger("logged_app")


@sk.deployment(isolation="process")
class Worker:
    def __call__(self, text: str) -> str:
        log.info("worker saw %s", text)
        print("a plain print in the worker", flush=True)
        return text.upper()


@sk.deployment
class Api:
    def __init__(self, worker: sk.DeploymentHandle) -> None:
        self.worker = worker

    @sk.endpoint("/shout", methods=["GET"])
    async def shout(self, text: str) -> dict[str, str]:
        log.info("api got %s", text)
        return {"text": await self.worker(text)}

    @sk.endpoint("/fail", methods=["GET"])
    async def fail(self) -> None:
        raise RuntimeError("it failed")


app = Api.bind(Worker.bind())
"""


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{output}") from None
    return parsed


def _wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what}:\n{log.read_text()}")
        time.sleep(0.05)


def test_json_logs_and_access_log_from_the_cli_carry_request_and_trace_ids_from_every_process(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    (tmp_path / "logged_app.py").write_text(textwrap.dedent(APP))
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{SOURCE_TREE}", PYTHONUNBUFFERED="1")
    env["OTEL_TRACES_EXPORTER"] = "none"  # with --tracing: spans (their ids in every line), exported nowhere
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "servekit", "serve", "logged_app:app", "--port", "0",
             "--log-format", "json", "--access-log", "--tracing"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    processes.append(process)
    _wait_for(lambda: '"url": "http' in log.read_text(), "'serving' line", process, log)
    url = next(line["url"] for line in _json_lines(log.read_text()) if "url" in line)
    with httpx.Client(timeout=30) as client:
        headers = {"x-request-id": "req-123", "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
        assert client.get(url + "/shout", params={"text": "hi"}, headers=headers).json() == {"text": "HI"}
        failed = client.get(url + "/fail")
        assert client.get(url + "/missing").status_code == 404
    _wait_for(lambda: '"/missing"' in log.read_text(), "access line of /missing", process, log)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    lines = _json_lines(log.read_text())

    for line in lines:
        assert {
            "time",
            "level",
            "logger",
            "message",
            "request_id",
            "trace_id",
            "deployment",
            "replica",
        } <= set(line)
    by_message = {line["message"]: line for line in lines}
    api = by_message["api got hi"]
    worker = by_message["worker saw hi"]
    assert (api["request_id"], api["trace_id"], api["deployment"], api["replica"]) == (
        "req-123", TRACE_ID, "Api", "Api#0",
    )  # fmt: skip
    assert (worker["request_id"], worker["trace_id"], worker["deployment"], worker["replica"]) == (
        "req-123", TRACE_ID, "Worker", "Worker#0",
    )  # fmt: skip
    assert by_message["a plain print in the worker"]["replica"] == "Worker#0"

    access = {line["path"]: line for line in lines if line["logger"] == "servekit.access"}
    assert set(access) == {"/shout", "/fail", "/missing"}
    shout = access["/shout"]
    assert (shout["method"], shout["route"], shout["status"], shout["request_id"]) == (
        "GET",
        "/shout",
        200,
        "req-123",
    )
    assert shout["trace_id"] == TRACE_ID
    assert shout["duration_ms"] > 0
    assert shout["client"].startswith("127.0.0.1:")
    assert (access["/fail"]["status"], access["/missing"]["status"], access["/missing"]["route"]) == (
        500,
        404,
        None,
    )

    failed_id = failed.headers["x-request-id"]
    assert failed.json()["error"]["request_id"] == failed_id
    errors = [line for line in lines if line["level"] == "ERROR" and line["request_id"] == failed_id]
    assert len(errors) == 1
    assert "it failed" in errors[0]["exception"]
