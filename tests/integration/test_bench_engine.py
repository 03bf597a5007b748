"""`servekit bench`'s load engine in this process against a real server: what it counts, and how it
fails requests that time out or whose connection the server drops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from starlette.responses import Response

import servekit as sk
from servekit._bench.load import BenchError, PhasePlan, run_phase
from servekit._bench.payload import parse_target, request_bytes

pytestmark = pytest.mark.integration

StartServer = Callable[..., sk.Server]


@sk.deployment(max_ongoing_requests=100)
class Target:
    def __init__(self) -> None:
        self.answered = 0

    @sk.endpoint("/fast", methods=["GET"])
    async def fast(self) -> str:
        self.answered += 1
        return "ok"

    @sk.endpoint("/slow", methods=["GET"])
    async def slow(self) -> str:
        await asyncio.sleep(1)  # past the 0.2 s timeout; short, so the server stops soon after
        return "late"

    @sk.endpoint("/close", methods=["GET"])
    async def close(self) -> Response:
        self.answered += 1
        return Response(b"bye", headers={"connection": "close"})

    @sk.endpoint("/answered", methods=["GET"])
    async def count(self) -> int:
        return self.answered


def _plan(server: sk.Server, path: str, **options: object) -> PhasePlan:
    target = parse_target(server.url + path)
    return PhasePlan(target.host, target.port, request_bytes("GET", target, None, None), **options)  # type: ignore[arg-type]


async def _answered(server: sk.Server) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(server.url + "/answered")).json())


async def test_closed_loop_counts_every_answer_and_reconnects_when_the_server_closes(
    serve_app: StartServer,
) -> None:
    server = serve_app(Target.bind())
    fast = await run_phase(_plan(server, "/fast", connections=3, rate=None, duration_s=0.3))
    closing = await run_phase(_plan(server, "/close", connections=2, rate=None, duration_s=0.3))
    assert fast.requests + closing.requests == await _answered(server)
    assert closing.statuses == {200: closing.requests}  # a fresh connection after each "close"
    assert fast.latency.total == fast.requests
    assert sum(row[0] for row in fast.timeline) == fast.requests


async def test_requests_past_the_timeout_fail_as_timeouts(serve_app: StartServer) -> None:
    server = serve_app(Target.bind())
    result = await run_phase(_plan(server, "/slow", connections=2, rate=None, duration_s=0.3, timeout_s=0.2))
    assert result.statuses == {}
    assert result.errors["timeout"] >= 2
    assert result.latency.total == 0


async def test_open_loop_warm_up_requests_are_counted_apart(serve_app: StartServer) -> None:
    server = serve_app(Target.bind())
    plan = _plan(server, "/fast", connections=2, rate=100.0, warmup_s=0.2, duration_s=0.3)
    result = await run_phase(plan)
    assert result.warmup_requests + result.requests + result.unsent == 50  # 0.5 s at 100/s
    assert result.warmup_requests + result.requests == await _answered(server)


async def test_a_refusing_target_is_one_clear_error(free_port: int) -> None:
    target = parse_target(f"http://127.0.0.1:{free_port}/")
    plan = PhasePlan(target.host, target.port, b"GET / HTTP/1.1\r\n\r\n", connections=1, rate=None)
    with pytest.raises(BenchError, match=f"cannot connect to 127.0.0.1:{free_port}"):
        await run_phase(plan)
