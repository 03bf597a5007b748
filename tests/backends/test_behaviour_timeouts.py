"""`request_timeout_s` on every backend: unary calls, streams (first chunk and each gap), and
sync code that outlives its timeout keeping its slot (`behaviour_apps.timeouts_app`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import behaviour_apps as apps
import pytest
from behaviour_support import HANDLE_BACKENDS, Backend

import servekit as sk
from servekit.errors import RequestTimeoutError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=HANDLE_BACKENDS)
def app(request: pytest.FixtureRequest) -> Iterator[tuple[str, sk.AppHandle]]:
    handle = Backend(request.param, request).run(apps.timeouts_app())
    yield request.param, handle
    handle.shutdown(grace_s=5)


async def test_a_stream_that_sends_no_first_chunk_times_out(app: tuple[str, sk.AppHandle]) -> None:
    streams = app[1].get_handle("Streams")
    with pytest.raises(RequestTimeoutError, match=r"first chunk of drip\(\) within request_timeout_s=1"):
        await anext(aiter(streams.drip([30])))


async def test_a_stream_that_falls_silent_times_out_after_its_chunks(app: tuple[str, sk.AppHandle]) -> None:
    streams = app[1].get_handle("Streams")
    received: list[int] = []

    async def consume() -> None:
        async for chunk in streams.drip([0, 0, 30]):
            received.append(chunk)

    with pytest.raises(RequestTimeoutError, match="after chunk 2"):
        await consume()
    assert received == [0, 1]


async def test_a_sync_generator_that_falls_silent_times_out_too(app: tuple[str, sk.AppHandle]) -> None:
    streams = app[1].get_handle("Streams")
    chunks = streams.drip_sync([0, 2.5])  # the second step sleeps past the 1 s timeout
    assert await anext(aiter(chunks)) == 0
    with pytest.raises(RequestTimeoutError, match="after chunk 1 of drip_sync"):
        await anext(aiter(chunks))


async def test_a_stream_longer_than_the_timeout_runs_while_it_keeps_sending(
    app: tuple[str, sk.AppHandle],
) -> None:
    streams = app[1].get_handle("Streams")
    assert [chunk async for chunk in streams.drip([0.3] * 5)] == [0, 1, 2, 3, 4]  # 1.5 s in all
    assert [chunk async for chunk in streams.drip_sync([0.3] * 5)] == [0, 1, 2, 3, 4]


async def test_a_sync_call_past_its_timeout_keeps_its_slot_until_its_thread_returns(
    app: tuple[str, sk.AppHandle],
) -> None:
    backend, handle = app
    blocking = handle.get_handle("Blocking")
    with pytest.raises(RequestTimeoutError, match=r"block\(\) within request_timeout_s=0\.3"):
        await blocking.block(1.5)
    if backend != "ray":  # Ray's status comes from Ray's controller, which knows no abandoned calls
        status = handle.status()["deployments"]["Blocking"]
        assert status["abandoned"] == 1
        assert status["replicas"][0]["abandoned"] == 1
    # max_ongoing_requests=1: a next call waits until the abandoned thread returns (past its own
    # 0.3 s timeout at first), and then runs alone
    deadline = time.monotonic() + 20
    while True:
        try:
            assert await blocking.others_running() == 0
            break
        except RequestTimeoutError:
            assert time.monotonic() < deadline, "the abandoned call never gave its slot back"
    if backend != "ray":
        assert handle.status()["deployments"]["Blocking"]["abandoned"] == 0
