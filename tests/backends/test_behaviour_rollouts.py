"""Canaries and A/B reports over HTTP, the same on each backend (`rollouts` serves `canary_apps`).

The canaries run in the real runtime on its real clock: a bounded load (16 requests in flight)
feeds them until each has decided, and every response must be 2xx while they promote and roll
back. The analysis itself is unit-tested with a fake clock (tests/unit/test_routing_canary.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import canary_apps
import httpx
import pytest
from behaviour_support import Backend

import servekit as sk
from servekit.errors import RolloutStateError

pytestmark = pytest.mark.integration

ROLLOUT_BACKENDS = ["local", "local-process", "ray"]
ENDED = {"shift": "rolled_back", "errors": "rolled_back", "same": "completed"}


@pytest.fixture(scope="module", params=ROLLOUT_BACKENDS)
def rollouts(request: pytest.FixtureRequest) -> Iterator[sk.Server]:
    """The app of `canary_apps`, served once per backend for the module."""
    app = canary_apps.canary_app()
    if request.param == "local-process":
        server = sk.serve(app, host="127.0.0.1", port=0, blocking=False, isolation="process")
    else:
        server = Backend(request.param, request).serve(app)
    yield server
    server.shutdown(grace_s=5)


def _cli(rollouts: sk.Server, request: pytest.FixtureRequest, *args: str) -> subprocess.CompletedProcess[str]:
    """`servekit rollout ARGS` against the server (`--url`), or on Ray the cluster (`--address`)."""
    where = ["--url", rollouts.url]
    if "Ray" in rollouts.location:
        where = ["--address", request.getfixturevalue("ray_cluster").address, "--app", "Api"]
    env = {**os.environ, "PYTHONPATH": str(Path(sk.__file__).parent.parent)}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "servekit", "rollout", *args, *where]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


async def _load_until(
    client: httpx.AsyncClient, base: str, paths: list[str], done: Callable[[], Awaitable[bool]]
) -> Counter[int]:
    """Keep 16 requests in flight over `paths` (in turn) until `done()`; the statuses answered."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        sent = index
        while not stop.is_set():
            statuses[(await client.get(f"{base}{paths[sent % len(paths)]}?x={sent}")).status_code] += 1
            sent += 1

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        try:
            while not await done():
                assert loop.time() < deadline, "the canaries did not decide within 60 s"
                await asyncio.sleep(0.2)
        finally:
            stop.set()

    await asyncio.gather(*(worker(i) for i in range(16)), watch())
    return statuses


async def test_canaries_roll_back_a_shift_and_5pc_errors_and_promote_an_equal_under_load(
    rollouts: sk.Server, async_client: httpx.AsyncClient
) -> None:
    async def decided() -> bool:
        found = (await async_client.get(rollouts.url + "/-/rollouts")).json()["rollouts"]
        return all(found[name]["state"] == state for name, state in ENDED.items())

    paths = ["/shift", "/errors", "/errors", "/errors", "/same"]  # errors needs the most evidence
    statuses = await _load_until(async_client, rollouts.url, paths, decided)
    assert set(statuses) == {200}, statuses

    found = (await async_client.get(rollouts.url + "/-/rollouts")).json()["rollouts"]
    for name, check in (("shift", "output"), ("errors", "error_rate")):
        canary = found[name]
        last = canary["events"][-1]
        assert (last["kind"], last["by"], last["step"]) == ("rollback", "analysis", 0)
        failed = {c["name"] for c in last["checks"] if c["verdict"] == "fail"}
        assert check in failed, last["reason"]
        started = canary["events"][0]["at"]
        assert last["at"] - started < canary_apps.ROLLBACK_BAKE_S  # within the first step's bake window
        assert last["weights"] == {"v1": 100.0, "v2": 0.0}
    assert found["shift"]["events"][-1]["checks"][2]["figures"]["divergence"] > 0.5
    assert found["same"]["weights"] == {"v1": 0.0, "v2": 100.0}
    assert [e["kind"] for e in found["same"]["events"]][-1] == "complete"

    status = (await async_client.get(rollouts.url + "/-/status")).json()["routers"]
    assert status["shift"]["weights"] == {"v1": 100.0, "v2": 0.0}
    assert status["shift"]["canary"]["state"] == "rolled_back"
    assert status["same"]["weights"] == {"v1": 0.0, "v2": 100.0}
    labels = {(await async_client.get(rollouts.url + "/same")).json()["label"] for _ in range(5)}
    assert labels == {"a"}


def test_operators_pause_resume_promote_and_abort_over_http(
    rollouts: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    url = rollouts.url + "/-/rollouts/manual"
    client.post(url + "/abort")  # a canary an earlier backend's test left is none of this test's
    body = {"candidate": "m2", "steps": [10, 50, 100], "bake_s": 600, "min_samples": 5}
    started = client.post(url + "/canary", json=body)
    assert started.status_code == 200, started.text
    assert (started.json()["baseline"], started.json()["weights"]) == ("m1", {"m1": 90.0, "m2": 10.0})
    assert client.post(url + "/canary", json=body).status_code == 409  # one runs already

    assert client.post(url + "/pause").json()["state"] == "paused"
    assert client.post(url + "/resume").json()["state"] == "running"
    promoted = client.post(url + "/promote").json()
    assert (promoted["step"], promoted["weights"]) == (1, {"m1": 50.0, "m2": 50.0})
    wait_until(lambda: client.get(rollouts.url + "/-/routers/manual").json()["applied_everywhere"], "apply")
    assert client.get(rollouts.url + "/-/routers/manual").json()["weights"] == {"m1": 50.0, "m2": 50.0}
    aborted = client.post(url + "/abort").json()
    assert aborted["state"] == "rolled_back"
    assert aborted["events"][-1]["by"] == "operator"

    ended = client.post(url + "/promote")
    assert ended.status_code == 409
    assert "already rolled back" in ended.json()["error"]["message"]
    assert client.get(rollouts.url + "/-/routers/manual").json()["weights"] == {"m1": 100.0, "m2": 0.0}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "problem"),
    [
        ("GET", "/-/rollouts/nope", None, 404, "no router named 'nope'"),
        ("POST", "/-/rollouts/nope/pause", None, 404, "no router named 'nope'"),
        ("GET", "/-/rollouts/ab", None, 404, "router 'ab' has no canary"),
        ("POST", "/-/rollouts/ab/abort", None, 404, "router 'ab' has no canary"),
        ("POST", "/-/rollouts/ab/canary", {"candidate": "z"}, 400, "candidate 'z' is not an arm"),
        ("POST", "/-/rollouts/ab/canary", {"candidate": "y", "baseline": "q"}, 400, "baseline 'q'"),
        ("POST", "/-/rollouts/ab/canary", {"candidate": "y", "steps": [50, 10]}, 400, "steps"),
        ("POST", "/-/rollouts/ab/canary", {"steps": [50, 100]}, 400, "candidate"),
    ],
)
def test_bad_rollout_requests_name_the_problem(
    rollouts: sk.Server,
    client: httpx.Client,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    problem: str,
) -> None:
    answer = client.request(method, rollouts.url + path, json=body)
    assert answer.status_code == status, answer.text
    assert problem in answer.json()["error"]["message"]
    assert client.get(rollouts.url + "/-/routers/ab").json()["weights"] == {"x": 1.0, "y": 1.0}


def test_the_rollout_cli_starts_and_operates_a_canary(
    rollouts: sk.Server, request: pytest.FixtureRequest
) -> None:
    """`servekit rollout canary|pause|resume|promote|abort` with `--url` (and `--address` on Ray)."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(rollouts, request, *args)

    cli("abort", "manual")  # whatever an earlier test left
    started = cli("canary", "manual", "--candidate", "m2", "--steps", "20,100", "--bake-s", "600")
    assert started.returncode == 0, started.stderr
    assert "canary m1 -> m2: running, step 1/2 (20% candidate)" in started.stdout
    assert "paused" in cli("pause", "manual").stdout
    assert "running" in cli("resume", "manual").stdout
    full = cli("promote", "manual", "--full")
    assert full.returncode == 0, full.stderr
    assert "completed" in full.stdout
    late = cli("abort", "manual")
    assert late.returncode == 1
    assert "already completed" in late.stderr
    assert "canary m1 -> m2: completed" in cli("status", "manual").stdout
    assert rollouts.router("manual").status()["weights"] == {"m1": 0.0, "m2": 100.0}
    rollouts.router("manual").set_weights({"m1": 100})


def test_python_operates_the_canary_too(rollouts: sk.Server) -> None:
    control = rollouts.router("manual")
    if control.canary.status()["state"] in ("running", "paused"):  # an earlier test's canary
        control.canary.abort()
    started = control.start_canary(sk.Canary(baseline="m1", candidate="m2", steps=[25, 100], bake_s=600))
    assert started["weights"] == {"m1": 75.0, "m2": 25.0}
    assert control.canary.pause()["state"] == "paused"
    assert control.canary.abort()["state"] == "rolled_back"
    with pytest.raises(RolloutStateError, match="already rolled back"):
        control.canary.resume()


def test_the_ab_report_has_each_arms_figures_and_the_test_between_them(
    rollouts: sk.Server, client: httpx.Client, wait_until: Callable[..., None], request: pytest.FixtureRequest
) -> None:
    for x in range(80):
        assert client.get(rollouts.url + f"/ab?x={x}").status_code == 200

    def report() -> dict[str, Any]:
        found: dict[str, Any] = client.get(rollouts.url + "/-/routers/ab").json()["ab"]
        return found

    def outcomes_in() -> bool:
        arms = report()["arms"]
        return all(arms[arm]["outcomes"].get("converted", {}).get("n", 0) >= 40 for arm in ("x", "y"))

    wait_until(outcomes_in, "the outcomes to reach the A/B report")
    ab = report()
    for arm in ("x", "y"):
        figures = ab["arms"][arm]
        assert figures["calls"] >= 40
        assert figures["errors"] == 0
        assert figures["latency_s"]["p95"] is not None
        converted = figures["outcomes"]["converted"]
        assert converted["ci95"][0] <= converted["mean"] <= converted["ci95"][1]
    assert ab["arms"]["y"]["outcomes"]["converted"]["mean"] > ab["arms"]["x"]["outcomes"]["converted"]["mean"]
    (compared,) = ab["comparisons"]["converted"]
    assert compared["significant"] is True
    assert compared["p_value"] < 0.05
    assert "more_samples_per_arm" in compared
    status = client.get(rollouts.url + "/-/status").json()["routers"]["ab"]
    assert status["ab"]["arms"]["x"]["calls"] >= 40
    shown = _cli(rollouts, request, "status", "ab")
    assert shown.returncode == 0, shown.stderr
    assert "outcome converted: x 0." in shown.stdout
    assert "x vs y: p = " in shown.stdout
