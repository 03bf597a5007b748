"""Process replicas: real worker processes, the whole path across the process boundary."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from process_apps import Echo, Elastic, Front, Pipeline, Poison, Sleepy, TorchModel

import servekit as sk
from servekit.errors import DeploymentStartError, ReplicaDiedError

StartServer = Callable[..., sk.Server]  # the `serve_app` fixture of tests/integration/conftest.py

DEADLINE_S = 20.0


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def worker_pids(handle: sk.AppHandle, deployment: str) -> list[int]:
    return [replica["pid"] for replica in handle.status()["deployments"][deployment]["replicas"]]


@pytest.fixture
def echo() -> Iterator[sk.AppHandle]:
    with sk.run(Echo.bind()) as handle:
        yield handle


def test_a_process_replica_runs_in_its_own_process(echo: sk.AppHandle) -> None:
    info = echo.info().result()
    assert info["pid"] != os.getpid()
    assert info["replica_id"] == "Echo#0"
    assert worker_pids(echo, "Echo") == [info["pid"]]


def test_unary_sync_and_streaming_calls_cross_the_boundary(echo: sk.AppHandle) -> None:
    assert echo.echo({"a": [1, 2.5, "x"]}).result() == {"a": [1, 2.5, "x"]}
    assert echo.sync_echo(b"bytes").result() == b"bytes"
    assert list(echo.count(5)) == [0, 1, 2, 3, 4]
    assert list(echo.count_sync(3)) == [0, 1, 2]


async def test_batching_forms_batches_inside_the_worker(echo: sk.AppHandle) -> None:
    results = await asyncio.gather(*(echo.double(float(i)) for i in range(16)))
    assert results == [2.0 * i for i in range(16)]
    await asyncio.to_thread(echo._running.thread.run, echo._running.runtime.refresh_stats())
    stats = echo.status()["deployments"]["Echo"]["replicas"][0]["batching"]["double"]
    assert stats["items"] == 16
    assert stats["batches"] < 16


def test_user_errors_keep_their_type_and_name_the_deployment(echo: sk.AppHandle) -> None:
    with pytest.raises(KeyError, match="deployment 'Echo'"):
        echo.boom().result()
    assert echo.echo(1).result() == 1, "the replica keeps serving after a user error"


def test_a_payload_that_cannot_cross_fails_only_its_own_call() -> None:
    with sk.run(Echo.options(max_ongoing_requests=10).bind()) as handle:
        bystanders = [handle.sleep(0.5) for _ in range(3)]
        with pytest.raises(TypeError, match="the result is unusable"):
            handle.poison().result(timeout=DEADLINE_S)
        with pytest.raises(TypeError, match="cannot be used in the worker"):
            handle.echo(Poison()).result(timeout=DEADLINE_S)
        assert len({call.result(timeout=DEADLINE_S) for call in bystanders}) == 1
        assert handle.status()["deployments"]["Echo"]["restarts"] == 0


def test_unknown_methods_are_404_before_reaching_the_worker(echo: sk.AppHandle) -> None:
    with pytest.raises(sk.errors.NotFoundError):
        echo.nope().result()


def test_torch_tensors_cross_both_ways_with_a_real_model() -> None:
    with sk.run(TorchModel.bind()) as model:
        weights = model.weights().result()
        x = torch.randn(3, 4)
        out = model.forward(x).result()
    expected = x @ weights["weight"].T + weights["bias"]
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, expected)


def test_process_replicas_call_each_other_through_handles() -> None:
    app = Pipeline.bind(Echo.bind(), TorchModel.bind())
    with sk.run(app) as pipeline:
        result = pipeline.run(1.5).result()
        relayed = list(pipeline.relay(3))
        pids = {name: worker_pids(pipeline, name) for name in ("Pipeline", "Echo", "TorchModel")}
    assert result["doubled"] == 3.0
    assert len(result["out"][0]) == 2
    assert result["chunks"] == [0, 1, 2]
    assert relayed == [0, 10, 20]
    assert result["pid"] == pids["Pipeline"][0]
    assert len({pid for group in pids.values() for pid in group}) == 3


def test_classes_defined_in_a_notebook_or_function_run_in_workers() -> None:
    @sk.deployment(isolation="process")
    class Local:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        def greet(self, name: str) -> tuple[str, int]:
            return f"{self.greeting}, {name}", os.getpid()

    with sk.run(Local.bind("hi")) as handle:
        text, pid = handle.greet("ada").result()
    assert text == "hi, ada"
    assert pid != os.getpid()


def test_the_server_default_isolation_applies_to_deployments_that_do_not_choose() -> None:
    @sk.deployment
    class Plain:
        def pid(self) -> int:
            return os.getpid()

    with sk.run(Plain.bind(), isolation="process") as handle:
        assert handle.pid().result() != os.getpid()
    with sk.run(Plain.bind()) as handle:
        assert handle.pid().result() == os.getpid()


def test_worker_output_reaches_the_server_log_prefixed_by_replica(capfd: pytest.CaptureFixture[str]) -> None:
    with sk.run(Echo.bind()) as handle:
        pid = handle.info().result()["pid"]
    err = capfd.readouterr().err
    assert f"(Echo#0 pid={pid}) echo replica Echo#0 ready" in err


def test_a_failing_constructor_fails_the_start_with_its_traceback(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(DeploymentStartError) as caught:
        sk.run(Echo.bind(fail_flag=str(flag)))
    message = str(caught.value)
    assert "Echo#0 failed to start" in message
    assert "refusing to start" in message
    # The worker's traceback is part of the error. Code that travels by value keeps its line
    # numbers and function names; cloudpickle >= 3.1.3 names its file "<dynamic-code>".
    assert "Traceback (most recent call last)" in message
    assert "in __init__" in message, "the user's frame is in the traceback"


def test_no_worker_outlives_shutdown() -> None:
    handle = sk.run(Echo.options(num_replicas=2).bind())
    pids = worker_pids(handle, "Echo")
    assert len(pids) == 2
    handle.shutdown()
    for pid in pids:
        wait_for(
            lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
            f"{pid} to exit",
        )


# -- crashes and health ---------------------------------------------------------------------------


def test_kill_9_under_load_fails_fast_and_the_replica_is_replaced() -> None:
    with sk.run(Echo.options(num_replicas=2, max_ongoing_requests=20).bind()) as handle:
        victim, survivor = worker_pids(handle, "Echo")
        calls = [handle.sleep(1.0) for _ in range(20)]
        wait_for(lambda: handle.status()["deployments"]["Echo"]["ongoing"] == 20, "20 calls in flight")
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        outcomes: list[Any] = []
        for call in calls:
            try:
                outcomes.append(call.result(timeout=DEADLINE_S))
            except ReplicaDiedError as exc:
                outcomes.append(exc)
        assert time.monotonic() - started < DEADLINE_S, "no request hangs"
        died = [o for o in outcomes if isinstance(o, ReplicaDiedError)]
        served = [o for o in outcomes if not isinstance(o, ReplicaDiedError)]
        assert died, "calls on the killed replica fail with ReplicaDiedError (503)"
        assert all(pid == survivor for pid in served)
        for error in died:  # the exit status when it is reaped in time, else the broken link
            assert f"pid {victim})" in str(error)
            assert "was killed by signal 9" in str(error) or "closed its connection" in str(error)
        view = wait_for(
            lambda: (v := handle.status()["deployments"]["Echo"])["running_replicas"] == 2 and v,
            "a replacement replica",
        )
        assert view["restarts"] == 1
        assert victim not in worker_pids(handle, "Echo")
        assert handle.echo("still serving").result() == "still serving"


def test_idempotent_calls_retry_once_on_another_replica_when_theirs_dies() -> None:
    with sk.run(Echo.options(num_replicas=2, max_ongoing_requests=20).bind()) as handle:
        victim, survivor = worker_pids(handle, "Echo")
        calls = [handle.safe_sleep(0.5) for _ in range(10)]
        wait_for(lambda: handle.status()["deployments"]["Echo"]["ongoing"] == 10, "10 calls in flight")
        os.kill(victim, signal.SIGKILL)
        pids = [call.result(timeout=DEADLINE_S) for call in calls]
    assert victim not in pids
    assert survivor in pids


def test_an_unhealthy_replica_is_replaced(tmp_path: Path) -> None:
    sick = tmp_path / "sick"
    with sk.run(Echo.bind(sick_flag=str(sick))) as handle:
        first = worker_pids(handle, "Echo")[0]
        sick.touch()
        wait_for(lambda: handle.status()["deployments"]["Echo"]["restarts"] >= 1, "the health check to fail")
        sick.unlink()
        wait_for(lambda: (pids := worker_pids(handle, "Echo")) and pids[0] != first, "a healthy replacement")
        assert "failed its health check" in handle.status()["deployments"]["Echo"]["last_error"]
        assert handle.echo(1).result() == 1


def test_replacements_that_fail_to_start_are_retried_with_backoff(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    with sk.run(Echo.options(request_timeout_s=30).bind(fail_flag=str(flag))) as handle:
        flag.touch()
        os.kill(worker_pids(handle, "Echo")[0], signal.SIGKILL)
        view = wait_for(
            lambda: (
                (v := handle.status()["deployments"]["Echo"])["last_error"]
                and "refusing to start" in v["last_error"]
                and v
            ),
            "a failed restart to be reported",
        )
        assert view["running_replicas"] == 0
        with pytest.raises(sk.errors.DeploymentUnavailableError):
            handle.echo(1).result(timeout=DEADLINE_S)  # fails, it does not hang
        flag.unlink()
        wait_for(lambda: handle.status()["deployments"]["Echo"]["running_replicas"] == 1, "recovery")
        assert handle.echo(2).result() == 2


# -- over HTTP --------------------------------------------------------------------------------------


def test_the_http_path_with_process_replicas(serve_app: StartServer, client: httpx.Client) -> None:
    server = serve_app(Front.bind(Echo.bind()))
    assert client.post(server.url + "/echo", json={"k": "v"}).json() == {"k": "v"}
    with client.stream("GET", server.url + "/count", params={"n": 4}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines == ['{"i":0}', '{"i":1}', '{"i":2}', '{"i":3}']
    status = client.get(server.url + "/-/status").json()
    assert status["deployments"]["Echo"]["isolation"] == "process"
    assert status["deployments"]["Front"]["isolation"] == "in_process"


async def test_http_batching_across_the_process_boundary(
    serve_app: StartServer, async_client: httpx.AsyncClient
) -> None:
    server = serve_app(Front.bind(Echo.bind()))
    responses = await asyncio.gather(
        *(async_client.post(server.url + "/double", json={"x": i}) for i in range(24))
    )
    assert [r.json()["y"] for r in responses] == [2 * i for i in range(24)]
    stats = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Echo"]["replicas"][0]
    assert stats["batching"]["double"]["items"] == 24
    assert stats["batching"]["double"]["batches"] < 24


async def test_a_crashed_replica_answers_503_over_http(
    serve_app: StartServer, async_client: httpx.AsyncClient, await_until: Callable[..., Any]
) -> None:
    server = serve_app(Front.bind(Echo.bind()))
    status = (await async_client.get(server.url + "/-/status")).json()
    pid = status["deployments"]["Echo"]["replicas"][0]["pid"]
    slow = asyncio.ensure_future(async_client.get(server.url + "/slow", params={"seconds": 5}))
    echo = server.handle.status
    await await_until(lambda: echo()["deployments"]["Echo"]["ongoing"] == 1, "the slow call to start")
    os.kill(pid, signal.SIGKILL)
    response = await asyncio.wait_for(slow, DEADLINE_S)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "replica_died"
    assert "Retry-After" in response.headers


# -- autoscaling ---------------------------------------------------------------------------------


async def test_autoscaling_adds_replicas_under_load_and_removes_them_when_idle() -> None:
    handle = sk.run(Elastic.bind())
    try:
        running = lambda: handle.status()["deployments"]["Elastic"]["running_replicas"]  # noqa: E731
        assert running() == 1
        stop = time.monotonic() + 8
        peak = 1

        async def load() -> None:
            while time.monotonic() < stop and peak < 3:
                await handle.work(0.2)

        async def watch() -> None:
            nonlocal peak
            while time.monotonic() < stop and peak < 3:
                peak = max(peak, running())
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(load() for _ in range(6)))
        assert peak >= 2, "replicas were added under load"
        decision = handle.status()["deployments"]["Elastic"]["autoscaling"]
        assert decision is not None
        assert decision["reason"]
        await asyncio.to_thread(wait_for, lambda: running() == 1, "scale down when idle")
    finally:
        handle.shutdown()


def test_a_request_at_zero_replicas_waits_for_a_cold_start() -> None:
    with sk.run(Sleepy.bind()) as handle:
        assert handle.status()["deployments"]["Sleepy"]["running_replicas"] == 0
        assert handle.status()["ready"]
        assert handle.hello().result(timeout=DEADLINE_S) == "hello"
        wait_for(
            lambda: handle.status()["deployments"]["Sleepy"]["running_replicas"] == 0, "scale back to zero"
        )


# -- GPUs -----------------------------------------------------------------------------------------


def test_declared_gpus_are_planned_exclusive_and_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_GPUS", "0,1,2,3")
    whole = Echo.options(name="Whole", num_replicas=2, resources=sk.Resources(gpus=1))
    half = Echo.options(name="Half", num_replicas=2, resources=sk.Resources(gpus=0.5))
    front = Pipeline.options(isolation="in_process")
    with sk.run(front.bind(whole.bind(), half.bind())) as handle:
        infos = {
            name: [handle.get_handle(name).info().result() for _ in range(8)] for name in ("Whole", "Half")
        }
    by_replica = {name: {info["replica_id"]: info for info in found} for name, found in infos.items()}
    whole_devices = [info["cuda_visible_devices"] for info in by_replica["Whole"].values()]
    half_devices = {info["cuda_visible_devices"] for info in by_replica["Half"].values()}
    assert len(by_replica["Whole"]) == 2
    assert len(by_replica["Half"]) == 2
    assert len(set(whole_devices)) == 2, "whole GPUs are exclusive"
    assert len(half_devices) == 1, "two halves pack onto one device"
    assert not half_devices & set(whole_devices)
    assert all(info["device"] == "cuda:0" for found in infos.values() for info in found)


def test_a_graph_that_cannot_fit_fails_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_GPUS", "0,1")
    greedy = Echo.options(num_replicas=3, resources=sk.Resources(gpus=1))
    with pytest.raises(DeploymentStartError, match="Echo") as caught:
        sk.run(greedy.bind())
    assert "SERVEKIT_GPUS" in str(caught.value)


# -- rolling update --------------------------------------------------------------------------------


async def test_a_rolling_update_under_load_fails_no_request(
    serve_app: StartServer, async_client: httpx.AsyncClient, await_until: Callable[..., Any]
) -> None:
    server = serve_app(Front.bind(Echo.options(num_replicas=2).bind()))
    before = {
        r["pid"]
        for r in (await async_client.get(server.url + "/-/status")).json()["deployments"]["Echo"]["replicas"]
    }
    failures: list[str] = []
    served = 0
    done = False

    async def hammer() -> None:
        nonlocal served
        while not done:
            response = await async_client.get(server.url + "/slow", params={"seconds": 0.05})
            if response.status_code != 200:
                failures.append(response.text)
            served += 1

    load = [asyncio.ensure_future(hammer()) for _ in range(8)]
    await await_until(lambda: served >= 10, "load before the redeploy")
    await asyncio.to_thread(server.redeploy, Front.bind(Echo.options(num_replicas=2, version="v2").bind()))
    after_redeploy = served
    await await_until(lambda: served >= after_redeploy + 10, "load after the redeploy")
    done = True
    await asyncio.gather(*load)
    after = (await async_client.get(server.url + "/-/status")).json()["deployments"]["Echo"]
    assert failures == []
    assert served > 20
    assert after["version"] == "v2"
    assert not before & {r["pid"] for r in after["replicas"]}, "every replica was replaced"


# -- the server process dies --------------------------------------------------------------------


def test_workers_exit_when_the_server_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import servekit as sk
            from process_apps import Echo
            handle = sk.run(Echo.options(num_replicas=2).bind())
            print(" ".join(str(r["pid"]) for r in handle.status()["deployments"]["Echo"]["replicas"]), flush=True)
            time.sleep(60)
            """
        )
    )
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        pids = [int(pid) for pid in server.stdout.readline().split()]
        assert len(pids) == 2
        server.kill()
        server.wait(10)
        for pid in pids:
            wait_for(
                lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
                f"worker {pid} to exit after its server died",
            )
    finally:
        if server.poll() is None:
            server.kill()
        if server.stdout is not None:
            server.stdout.close()
