"""Hot-swap on promotion, the same on every backend: moving a tag under constant HTTP load.

Deployments bound to `clf:production` follow the tag: `Rolling` by rolling replicas, `InPlace`
through its `reconfigure_model(path)`. Moving the tag forward and back under load answers
only 2xx, and the answers follow the tag. A version that fails to load leaves the old serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import model_apps
import pytest
from behaviour_support import HANDLE_BACKENDS, Backend

import servekit as sk
from servekit.errors import ModelNotFoundError

pytestmark = pytest.mark.integration
PATHS = ("/rolling", "/in-place")


def _store(tmp_path: Path, *versions: str) -> str:
    store = str(tmp_path / "store")
    for index, text in enumerate(versions, start=1):
        (tmp_path / f"w{index}").write_text(text)
        sk.models.push("clf", tmp_path / f"w{index}", version=f"v{index}", store=store)
    sk.models.tag("clf", "v1", "production", store=store)
    return store


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_MODEL_CACHE", str(tmp_path / "cache"))


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


@pytest.mark.parametrize("backend_name", HANDLE_BACKENDS)
async def test_moving_the_tag_forward_and_back_under_load_answers_only_2xx(
    backend_name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    async_client: httpx.AsyncClient,
    await_until: Callable[..., Awaitable[None]],
) -> None:
    store = _store(tmp_path, "one", "two")
    backend = Backend(backend_name, request)
    if backend_name == "local-process":
        server = sk.serve(model_apps.model_app(store), port=0, blocking=False, isolation="process")
    else:
        server = backend.serve(model_apps.model_app(store))
    try:
        load = Load(async_client, server.url)
        await await_until(lambda: load.settled_on("one", "v1"), "v1 answering")
        sk.models.tag("clf", "v2", "production", store=store)
        await await_until(lambda: load.settled_on("two", "v2"), "both strategies moving to v2")
        sk.models.rollback("clf", "production", store=store)
        await await_until(lambda: load.settled_on("one", "v1"), "both strategies rolling back to v1")
        assert await load.stop() == []
        if backend_name != "ray":  # Ray Serve's status lists replicas, not what each one serves
            status = (await async_client.get(server.url + "/-/status")).json()
            for name in ("Rolling", "InPlace"):
                models = [replica["model"] for replica in status["deployments"][name]["replicas"]]
                assert [model["version"] for model in models] == ["v1", "v1"], models
    finally:
        server.shutdown(grace_s=5)


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving_and_is_reported(
    tmp_path: Path, wait_until: Callable[..., None]
) -> None:
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
