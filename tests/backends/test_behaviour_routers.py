"""Traffic-split routers over HTTP, the same on each backend (`routed` serves `router_apps`).

Load tests keep a bounded stream of requests going (a few hundred per second, 16 at a time)
while a transition happens, and check every response was 2xx.
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

import httpx
import pytest
import router_apps
from behaviour_support import Backend

import servekit as sk

pytestmark = pytest.mark.integration

ROUTER_BACKENDS = ["local", "local-process", "ray"]
"""In-process replicas, worker-process replicas (routers deep in the graph route in the server),
and Ray (routers route in each replica; their state lives in the app's named actor)."""


@pytest.fixture(scope="module", params=ROUTER_BACKENDS)
def routed(request: pytest.FixtureRequest) -> Iterator[sk.Server]:
    """The app of `router_apps`, served once per backend for the module."""
    app = router_apps.router_app()
    if request.param == "local-process":
        server = sk.serve(app, host="127.0.0.1", port=0, blocking=False, isolation="process")
    else:
        server = Backend(request.param, request).serve(app)
    yield server
    server.shutdown(grace_s=5)


CHANGE_REACHES_S = 30.0
"""Bound on how long a router change takes to reach every ingress replica (Ray: its next poll)."""


async def _under_load(
    client: httpx.AsyncClient,
    url: str,
    transition: Callable[[], Awaitable[None]],
    seconds: float = 2.0,
    until: Callable[[list[httpx.Response]], bool] | None = None,
) -> list[httpx.Response]:
    """Keep 16 requests in flight at `url` for `seconds`, running `transition` half-way, and on
    (at most `CHANGE_REACHES_S` more) until `until(responses)` holds: on Ray a change reaches the ingress
    replicas at their next poll of the router's state, later than `seconds` on a loaded machine."""
    responses: list[httpx.Response] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    give_up = end + CHANGE_REACHES_S

    def going() -> bool:
        now = loop.time()
        return now < end or (until is not None and now < give_up and not until(responses))

    async def worker() -> None:
        while going():
            responses.append(await client.get(url))

    async def change() -> None:
        await asyncio.sleep(seconds / 2)
        await transition()

    await asyncio.gather(*(worker() for _ in range(16)), change())
    return responses


def _set_weights(
    routed: sk.Server, name: str, weights: dict[str, float], wait_until: Callable[..., None]
) -> None:
    """Set router `name`'s weights and wait until every process routing through it applies them."""
    routed.router(name).set_weights(weights)
    wait_until(lambda: routed.router(name).status()["applied_everywhere"], f"{name}'s weights to apply")


def _statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def test_weights_are_exact_over_many_calls(
    routed: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    _set_weights(routed, "clf", {"v1": 3, "v2": 1}, wait_until)
    arms = Counter(client.get(routed.url + "/classify").json()["arm"] for _ in range(200))
    assert abs(arms["v2"] - 50) <= 1
    assert arms["v1"] + arms["v2"] == 200


def test_a_router_two_hops_down_sticks_by_a_header_the_ingress_got(
    routed: sk.Server, client: httpx.Client
) -> None:
    seen: dict[str, set[str]] = {}
    for index in range(60):
        user = f"user-{index % 20}"
        answer = client.get(routed.url + "/user", headers={"x-user-id": user})
        seen.setdefault(user, set()).add(answer.json()["arm"])
    assert all(len(arms) == 1 for arms in seen.values())
    assert {arm for arms in seen.values() for arm in arms} == {"a", "b"}


def test_every_response_carries_a_request_id_and_outcomes_reach_the_arm(
    routed: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    given = client.get(routed.url + "/user", headers={"x-request-id": "req-42", "x-user-id": "u1"})
    assert given.headers["x-request-id"] == "req-42"
    made = client.get(routed.url + "/color")
    assert len(made.headers.get_list("x-request-id")) == 1
    assert made.headers["x-request-id"]
    arm = given.json()["arm"]
    posted = client.post(
        routed.url + "/-/routers/sticky/outcomes",
        json={"request_id": "req-42", "name": "revenue", "value": 2.5},
    )
    assert posted.json()["credited"] in ({"sticky": arm}, "queued")  # Ray: credited at the next poll

    def outcomes() -> dict[str, Any]:
        found: dict[str, Any] = client.get(routed.url + "/-/routers/sticky").json()["arms"][arm]["outcomes"]
        return found

    wait_until(lambda: {"revenue", "clicked"} <= set(outcomes()), "the outcomes to reach the arm")
    assert outcomes()["revenue"] == {"count": 1, "mean": 2.5}


async def test_a_weight_change_under_load_drops_nothing_and_applies_at_once(
    routed: sk.Server,
    async_client: httpx.AsyncClient,
    wait_until: Callable[..., None],
    await_until: Callable[..., Awaitable[None]],
) -> None:
    _set_weights(routed, "clf", {"v1": 1}, wait_until)

    async def to_v2() -> None:
        answer = await async_client.put(routed.url + "/-/routers/clf/weights", json={"weights": {"v2": 1}})
        assert answer.status_code == 200

    def v2_answered(responses: list[httpx.Response]) -> bool:
        return any(r.status_code == 200 and r.json()["arm"] == "v2" for r in responses[-16:])

    responses = await _under_load(async_client, routed.url + "/classify", to_v2, until=v2_answered)
    assert _statuses(responses) == {200: len(responses)}
    arms = [response.json()["arm"] for response in responses]
    assert set(arms) == {"v1", "v2"}

    answered: list[str] = []

    async def ask_forever() -> None:
        while True:
            answered[:] = [
                (await async_client.get(routed.url + "/classify")).json()["arm"] for _ in range(10)
            ]

    def only_v2() -> bool:  # every process routing "clf" reads the new weights (they poll every 0.5 s)
        return set(answered) == {"v2"}

    asking = asyncio.get_running_loop().create_task(ask_forever())
    try:
        await await_until(only_v2, "ten answers in a row from v2 only")
    finally:
        asking.cancel()


async def test_blue_green_switch_and_switch_back_under_load_drop_nothing(
    routed: sk.Server, async_client: httpx.AsyncClient
) -> None:
    async def switch() -> None:
        body = {"to": "green", "bake_s": 30, "warmup": {"args": [1]}}
        answer = await async_client.post(routed.url + "/-/routers/bg/switch", json=body)
        assert answer.status_code == 200, answer.text

    responses = await _under_load(async_client, routed.url + "/color", switch)
    assert _statuses(responses) == {200: len(responses)}
    assert routed.router("bg").status()["weights"] == {"blue": 0.0, "green": 1.0}
    assert routed.router("bg").status()["mode"] == "switched"

    async def back() -> None:
        answer = await async_client.post(routed.url + "/-/routers/bg/switch-back")
        assert answer.status_code == 200, answer.text

    responses = await _under_load(async_client, routed.url + "/color", back)
    assert _statuses(responses) == {200: len(responses)}
    assert (await async_client.get(routed.url + "/color")).json()["arm"] == "blue"


def test_a_crashing_or_sleeping_shadow_leaves_every_response_2xx_and_is_counted(
    routed: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    _set_weights(routed, "clf", {"v1": 1}, wait_until)
    answers = [client.get(routed.url + "/classify") for _ in range(40)]
    assert {answer.status_code for answer in answers} == {200}
    assert {answer.json()["arm"] for answer in answers} == {"v1"}

    def sleepy_answered() -> bool:
        return bool(routed.router("clf").status()["shadows"]["sleepy"]["calls"])

    wait_until(sleepy_answered, "the sleeping shadow to answer once")
    view = routed.router("clf").status()
    assert view["shadows"]["broken"]["errors"] == view["shadows"]["broken"]["calls"] >= 20
    assert 0.0 < view["shadow_comparison"]["sleepy"]["agreement_rate"] <= 1.0  # sleepy answers "v1"


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"weights": {"v1": -5}}, 400, "negative"),
        ({"weights": {"v1": 0, "v2": 0}}, 400, "all zero"),
        ({"weights": {"v9": 1}}, 400, "no arm 'v9'"),
        ({"nothing": 1}, 400, "'weights'"),
    ],
)
def test_a_bad_weight_map_is_refused_and_the_split_untouched(
    routed: sk.Server, client: httpx.Client, body: dict[str, object], status: int, problem: str
) -> None:
    routed.router("clf").set_weights({"v1": 3, "v2": 1})
    answer = client.put(routed.url + "/-/routers/clf/weights", json=body)
    assert answer.status_code == status
    assert problem in answer.json()["error"]["message"]
    assert client.get(routed.url + "/-/routers/clf").json()["weights"] == {"v1": 3.0, "v2": 1.0}
    assert client.put(routed.url + "/-/routers/nope/weights", json={"weights": {"v1": 1}}).status_code == 404


def test_status_and_openapi_show_the_routers(routed: sk.Server, client: httpx.Client) -> None:
    status = client.get(routed.url + "/-/status").json()
    assert set(status["routers"]) == {"clf", "sticky", "bg"}
    assert set(status["routers"]["clf"]["arms"]) == {"v1", "v2"}
    paths = client.get(routed.url + "/openapi.json").json()["paths"]
    assert "/-/routers/{name}/weights" in paths


def test_the_rollout_cli_reads_and_changes_weights(routed: sk.Server, request: pytest.FixtureRequest) -> None:
    """`servekit rollout ... --url` against the server; on Ray also `--address` against the cluster."""
    where = ["--url", routed.url]
    if "Ray" in routed.location:
        where = ["--address", request.getfixturevalue("ray_cluster").address, "--app", "Api"]

    def cli(*args: str, command: str = "rollout") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(sk.__file__).parent.parent)}
        env.pop("RAY_ADDRESS", None)
        argv = [sys.executable, "-m", "servekit", command, *args, *where]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)

    changed = cli("weights", "clf", "v1=1", "v2=4")
    assert changed.returncode == 0, changed.stderr
    assert routed.router("clf").status()["weights"] == {"v1": 1.0, "v2": 4.0}
    shown = cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "router clf" in shown.stdout
    assert "80.0%" in shown.stdout
    refused = cli("weights", "clf", "v1=-1")
    assert refused.returncode == 1
    assert "negative" in refused.stderr
    assert routed.router("clf").status()["weights"] == {"v1": 1.0, "v2": 4.0}
    status = cli(command="status")
    assert status.returncode == 0, status.stderr
    assert "router clf" in status.stdout


def _lose_the_routing_replica(routed: sk.Server) -> None:
    """Lose the replica of `Mid` (where router "clf" routes): kill its Ray actor or worker process;
    in-process replicas cannot be killed, so there it is replaced by a redeploy."""
    replicas = routed.handle.status()["deployments"]["Mid"]["replicas"]
    if "Ray" in routed.location:
        import ray

        names = ray.util.list_named_actors(all_namespaces=True)
        mid = next(a for a in names if "#Mid#" in a["name"] or a["name"].endswith("#Mid"))
        ray.kill(ray.get_actor(mid["name"], namespace=mid["namespace"]), no_restart=True)
    elif replicas and replicas[0].get("pid") is not None:
        os.kill(replicas[0]["pid"], 9)
    else:
        routed.redeploy(router_apps.router_app(mid_version="2"))


def test_the_live_weights_outlive_the_replica_that_routes(
    routed: sk.Server, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    _set_weights(routed, "clf", {"v2": 1}, wait_until)
    _lose_the_routing_replica(routed)

    def answers_v2() -> bool:
        answer = client.get(routed.url + "/classify")
        return answer.status_code == 200 and answer.json()["arm"] == "v2"

    wait_until(answers_v2, "a new Mid replica to answer")
    assert {client.get(routed.url + "/classify").json()["arm"] for _ in range(20)} == {"v2"}
    assert routed.router("clf").status()["weights"] == {"v1": 0.0, "v2": 1.0}
