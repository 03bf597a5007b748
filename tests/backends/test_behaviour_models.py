"""Models, the same on every backend: hot-swap on promotion under constant HTTP load, and
multiplexing by the `serve-multiplexed-model-id` header. One app per backend for the module.

Deployments bound to `clf:production` follow the tag: `Rolling` by rolling replicas, `InPlace`
through its `reconfigure_model(path)`. Moving the tag forward and back under load answers
only 2xx, and the answers follow the tag. A version that fails to load leaves the old serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import model_apps
import pytest
from behaviour_support import HANDLE_BACKENDS, Backend

import servekit as sk
from servekit.errors import ModelNotFoundError

pytestmark = pytest.mark.integration
PATHS = ("/rolling", "/in-place")
IDS = [f"m{index}" for index in range(20)]


def _store(folder: Path, *versions: str) -> str:
    store = str(folder / "store")
    for index, text in enumerate(versions, start=1):
        (folder / f"w{index}").write_text(text)
        sk.models.push("clf", folder / f"w{index}", version=f"v{index}", store=store)
    sk.models.tag("clf", "v1", "production", store=store)
    return store


@dataclass(frozen=True)
class Served:
    server: sk.Server
    store: str
    backend: str


@pytest.fixture(scope="module", params=HANDLE_BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`model_apps.model_app` served once per backend, its store holding v1 'one' and v2 'two'."""
    folder = tmp_path_factory.mktemp("models")
    store = _store(folder, "one", "two")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVEKIT_MODEL_CACHE", str(folder / "cache"))
        if request.param == "local-process":
            server = sk.serve(model_apps.model_app(store), port=0, blocking=False, isolation="process")
        else:
            server = Backend(request.param, request).serve(model_apps.model_app(store))
        yield Served(server, store, request.param)
        server.shutdown(grace_s=5)


class Load:
    """Constant, bounded HTTP load: `workers` clients each calling the paths in turn."""

    def __init__(self, http: httpx.AsyncClient, url: str, workers: int = 4) -> None:
        self.answers: dict[str, list[tuple[int, str | None, str | None]]] = {path: [] for path in PATHS}
        self._http, self._url, self._stop = http, url, asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(index)) for index in range(workers)]

    async def _client(self, index: int) -> None:
        while not self._stop.is_set():
            path = PATHS[index % len(PATHS)]
            response = await self._http.get(self._url + path)
            body = response.json() if response.status_code == 200 else {}
            self.answers[path].append((response.status_code, body.get("answer"), body.get("version")))
            index += 1

    def settled_on(self, answer: str, version: str, last: int = 8) -> bool:
        """Whether the last `last` answers of every path are `answer` from `version`."""
        return all(
            len(got) >= last and all(row[1:] == (answer, version) for row in got[-last:])
            for got in self.answers.values()
        )

    async def stop(self) -> list[tuple[int, str | None, str | None]]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return [row for rows in self.answers.values() for row in rows if row[0] != 200]


WATCH_CATCH_UP_S = 30.0
"""Bound on how long a replica may take to follow a moved tag (many watch periods)."""

RAY_ROLL_S = 120.0
"""Bound on a rolling swap on Ray: Ray Serve starts each new replica actor (a worker process
importing the app) before it stops an old one; ~12 s here when idle, several times that while
the rest of the suite loads both cores."""


@pytest.mark.timeout(600)
async def test_moving_the_tag_forward_and_back_under_load_answers_only_2xx(
    served: Served, async_client: httpx.AsyncClient, await_until: Callable[..., Awaitable[None]]
) -> None:
    store, url = served.store, served.server.url
    roll_s = RAY_ROLL_S if served.backend == "ray" else WATCH_CATCH_UP_S
    load = Load(async_client, url)
    await await_until(lambda: load.settled_on("one", "v1"), "v1 answering")
    sk.models.tag("clf", "v2", "production", store=store)
    await await_until(lambda: load.settled_on("two", "v2"), "both strategies moving to v2", roll_s)
    sk.models.rollback("clf", "production", store=store)
    await await_until(lambda: load.settled_on("one", "v1"), "both strategies rolling back to v1", roll_s)
    assert await load.stop() == []
    if served.backend != "ray":  # Ray Serve's status lists replicas, not what each one serves

        async def replica_versions() -> list[str]:
            status = (await async_client.get(url + "/-/status")).json()
            return [
                replica["model"]["version"]
                for name in ("Rolling", "InPlace")
                for replica in status["deployments"][name]["replicas"]
            ]

        # the answers above may all have come from one replica; each in-place replica follows
        # the tag on its own poll, so the other one catches up within the watch period
        deadline = time.monotonic() + WATCH_CATCH_UP_S
        while (versions := await replica_versions()) != ["v1"] * 4:
            assert time.monotonic() < deadline, f"replicas still on {versions}"
            await asyncio.sleep(0.05)


async def test_twenty_models_over_two_replicas_by_header(
    served: Served, async_client: httpx.AsyncClient
) -> None:
    async def predict(model_id: str) -> httpx.Response:
        headers = {"serve-multiplexed-model-id": model_id}
        return await async_client.get(served.server.url + "/predict", headers=headers)

    burst = await asyncio.gather(*(predict(model_id) for model_id in IDS for _ in range(2)))
    assert [r.json()["model"] for r in burst] == [model_id.upper() for model_id in IDS for _ in range(2)]
    assert {r.json()["overlapping_loads"] for r in burst} == {0}  # never one id loaded twice at once
    missing = await predict("missing")
    assert missing.status_code == 503
    assert "model id 'missing' failed to load: FileNotFoundError" in missing.json()["error"]["message"]
    assert (await predict("m1")).status_code == 200  # other models keep serving


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_until: Callable[..., None]
) -> None:
    monkeypatch.setenv("SERVEKIT_MODEL_CACHE", str(tmp_path / "cache"))
    store = _store(tmp_path, "one", "broken")
    with sk.run(model_apps.model_app(store)) as handle:
        sk.models.tag("clf", "v2", "production", store=store)

        def reported() -> bool:
            status = handle.status()
            errors = [replica["model"]["error"] for replica in status["deployments"]["InPlace"]["replicas"]]
            rollout = status["last_rollout"] or {}
            return all(errors) and rollout.get("state") == "failed"

        wait_until(reported, "the failed swap in status")
        status = handle.status()
        error = status["deployments"]["InPlace"]["replicas"][0]["model"]["error"]
        assert "model 'clf' version 'v2' (clf:production) failed to load, so 'v1' keeps serving" in error
        assert "servekit models rollback clf production" in error
        assert "cannot load the weights" in status["last_rollout"]["error"]
        rolling, in_place = handle.get_handle("Rolling"), handle.get_handle("InPlace")
        assert {(await rolling())["answer"] for _ in range(6)} == {"one"}
        assert {(await in_place())["answer"] for _ in range(6)} == {"one"}


def test_an_unknown_tag_fails_the_start_with_one_line(tmp_path: Path) -> None:
    store = _store(tmp_path, "one")
    app = model_apps.Rolling.bind(sk.model("clf", tag="staging", store=store))
    with pytest.raises(ModelNotFoundError) as info:
        sk.run(app)
    assert str(info.value) == (
        "model 'clf' has no tag 'staging' (tags: latest, production); "
        "set it with `servekit models tag clf VERSION staging`"
    )
