"""`servekit.run` and handles: await, .result(), streaming, passing responses, errors, timeouts."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import servekit as sk
from servekit.errors import RequestTimeoutError, UserCodeError


@sk.deployment(num_replicas=2)
class Tokenize:
    def __call__(self, text: str) -> list[str]:
        return text.split()


@sk.deployment
class Count:
    def __init__(self) -> None:
        self.context = sk.replica_context()

    async def count(self, tokens: list[str]) -> int:
        return len(tokens)

    def where(self) -> dict[str, Any]:
        return {"thread": threading.current_thread().name, "device": sk.replica_context().device}

    async def tokens(self, tokens: list[str]) -> Any:
        for token in tokens:
            yield token

    def sync_tokens(self, tokens: list[str]) -> Iterator[str]:
        yield from tokens

    def fail(self) -> None:
        raise KeyError("missing")

    def echo(self, value: Any = None, **more: Any) -> Any:
        return [value, more] if more else value

    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"


@sk.deployment(request_timeout_s=0.2)
class Pipeline:
    def __init__(self, tokenize: sk.DeploymentHandle, count: sk.DeploymentHandle) -> None:
        self.tokenize = tokenize
        self.count = count

    async def words(self, text: str) -> int:
        return await self.count.count(self.tokenize(text))  # a response passed on, not awaited

    async def stream(self, text: str) -> Any:
        async for token in self.count.tokens(self.tokenize(text)):
            yield token.upper()

    async def fail(self) -> None:
        await self.count.fail()

    async def slow(self, seconds: float) -> str:
        return await self.count.sleep(seconds)


@pytest.fixture
def handle() -> Iterator[sk.AppHandle]:
    with sk.run(Pipeline.bind(Tokenize.bind(), Count.bind())) as app:
        yield app


def test_result_from_sync_code(handle: sk.AppHandle) -> None:
    assert handle.words("a b c").result(timeout=5) == 3


async def test_await_from_another_event_loop(handle: sk.AppHandle) -> None:
    results = await asyncio.gather(*(handle.words("x " * n) for n in range(1, 6)))
    assert results == [1, 2, 3, 4, 5]


def test_streaming_with_for(handle: sk.AppHandle) -> None:
    assert list(handle.stream("a b")) == ["A", "B"]


async def test_streaming_with_async_for(handle: sk.AppHandle) -> None:
    assert [chunk async for chunk in handle.stream("c d e")] == ["C", "D", "E"]


def test_sync_generators_stream(handle: sk.AppHandle) -> None:
    assert list(handle.get_handle("Count").sync_tokens(["p", "q"])) == ["p", "q"]


def test_exception_keeps_its_type_and_names_the_deployment(handle: sk.AppHandle) -> None:
    with pytest.raises(KeyError) as info:
        handle.fail().result(timeout=5)
    assert isinstance(info.value, UserCodeError)
    assert "deployment 'Count'" in str(info.value)
    assert "missing" in str(info.value)


def test_attributed_exceptions_survive_pickling(handle: sk.AppHandle) -> None:
    with pytest.raises(KeyError) as info:
        handle.fail().result(timeout=5)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, KeyError)
    assert str(copy) == str(info.value)


def test_request_timeout_cancels_and_raises(handle: sk.AppHandle) -> None:
    with pytest.raises(RequestTimeoutError, match=r"request_timeout_s=0\.2") as info:
        handle.slow(5).result(timeout=5)
    assert info.value.status_code == 504
    assert handle.status()["deployments"]["Count"]["ongoing"] == 0


def test_sync_methods_start_on_a_worker_thread(handle: sk.AppHandle) -> None:
    where = handle.get_handle("Count").where().result(timeout=5)
    assert where["thread"].startswith("servekit-replica")
    assert where["device"] == "cpu"


def test_unknown_method_is_a_clear_error(handle: sk.AppHandle) -> None:
    with pytest.raises(sk.errors.NotFoundError, match="no public method 'nope'"):
        handle.nope()


def test_replicas_share_the_load(handle: sk.AppHandle) -> None:
    tokenize = handle.get_handle("Tokenize")
    calls = [tokenize("a b") for _ in range(50)]
    assert all(call.result(timeout=5) == ["a", "b"] for call in calls)
    replicas = handle.status()["deployments"]["Tokenize"]["replicas"]
    assert [r["id"] for r in replicas] == ["Tokenize#0", "Tokenize#1"]


def test_status_reports_replicas_and_versions(handle: sk.AppHandle) -> None:
    status = handle.status()
    assert status["ready"] is True
    assert status["ingress"] == "Pipeline"
    assert status["deployments"]["Tokenize"]["running_replicas"] == 2


async def test_result_on_the_runtime_loop_is_refused() -> None:
    @sk.deployment
    class Blocker:
        def __init__(self, inner: sk.DeploymentHandle) -> None:
            self.inner = inner

        async def block(self) -> Any:
            return self.inner.count(["x"]).result()

    with sk.run(Blocker.bind(Count.bind())) as app, pytest.raises(RuntimeError, match="use 'await response'"):
        await app.block()


def test_run_can_start_again_in_the_same_process() -> None:
    for _ in range(2):
        with sk.run(Pipeline.bind(Tokenize.bind(), Count.bind())) as app:
            assert app.words("one two").result(timeout=5) == 2


def test_shutdown_lets_in_flight_requests_finish(wait_until: Callable[..., None]) -> None:
    app = sk.run(Count.bind())
    pending = app.sleep(0.3)
    wait_until(lambda: app.status()["deployments"]["Count"]["ongoing"] == 1, "the call to start")
    app.shutdown(grace_s=5)
    assert pending.result(timeout=5) == "slept"


def test_calls_after_shutdown_are_refused() -> None:
    app = sk.run(Count.bind())
    app.shutdown()
    with pytest.raises(sk.errors.DeploymentUnavailableError, match="'Count' is shut down"):
        app.count(["x"]).result(timeout=5)


def test_failing_constructor_stops_the_start_with_its_message() -> None:
    @sk.deployment
    class Broken:
        def __init__(self) -> None:
            raise OSError("weights not found")

    with pytest.raises(sk.errors.DeploymentStartError, match=r"'Broken'.*weights not found"):
        sk.run(Broken.bind())


def test_function_deployments_are_called_through_the_handle() -> None:
    @sk.deployment
    def shout(text: str) -> str:
        return text.upper()

    with sk.run(shout.bind()) as app:
        assert app("hi").result(timeout=5) == "HI"


def test_replica_context_outside_a_replica_explains_itself() -> None:
    with pytest.raises(RuntimeError, match="outside a replica"):
        sk.replica_context()


async def test_responses_nested_in_arguments_arrive_as_results(handle: sk.AppHandle) -> None:
    count = handle.get_handle("Count")
    tokenize = handle.get_handle("Tokenize")
    nested = [tokenize("a b"), (tokenize("c"),), {"d": tokenize("d e f")}]
    assert await count.echo(nested) == [["a", "b"], (["c"],), {"d": ["d", "e", "f"]}]
    assert await count.echo(extra=[tokenize("x"), [tokenize("y z")]]) == [
        None,
        {"extra": [["x"], [["y", "z"]]]},
    ]
    received = [token async for token in count.tokens([tokenize("p"), {"q": tokenize("q r")}])]
    assert received == [["p"], {"q": ["q", "r"]}]


def test_the_search_for_nested_responses_is_bounded() -> None:
    from servekit._runtime.handle import SCAN_LIMIT, DeploymentResponse, _has_response

    marker = object.__new__(DeploymentResponse)
    assert _has_response(([0.5] * 16,), {}) is False
    assert _has_response(([[1, 2], {"a": (3, marker)}],), {}) is True
    assert _has_response((), {"k": {"deep": [marker]}}) is True
    assert _has_response(({marker},), {}) is False, "sets are not looked into"
    assert _has_response(([0.0] * SCAN_LIMIT + [marker],), {}) is False, "past the limit: not searched"
    assert _has_response(([0.0] * (SCAN_LIMIT - 1) + [marker],), {}) is True
