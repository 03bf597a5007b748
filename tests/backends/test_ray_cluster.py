"""The Ray backend on a two-node cluster: GPU placement, checks before start, Ray's autoscaling
under a servekit config, rolling redeploys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray_apps
from behaviour_support import RayCluster
from ray import serve

import servekit as sk
from servekit.errors import DeploymentStartError, InsufficientResourcesError

pytestmark = pytest.mark.integration


@pytest.fixture
def on_ray(ray_cluster: RayCluster) -> Iterator[list[sk.AppHandle]]:
    """Apps a test starts with `sk.run(..., backend="ray")`; all shut down afterwards."""
    started: list[sk.AppHandle] = []
    yield started
    for handle in started:
        handle.shutdown(grace_s=2)


def test_gpu_replicas_run_on_the_gpu_node_with_the_devices_ray_gave_them(
    ray_cluster: RayCluster, on_ray: list[sk.AppHandle]
) -> None:
    handle = sk.run(ray_apps.gpu_app(), backend="ray")
    on_ray.append(handle)
    survey = handle.survey(40).result(timeout=60)
    status = handle.status()["deployments"]

    (whole,) = survey["WholeGpu"]
    halves = survey["HalfGpu"]
    assert len(halves) == 2
    for replica in [whole, *halves]:
        assert replica["node_id"] == ray_cluster.gpu_node_id
        assert replica["device"] == "cuda:0"
        assert len(replica["gpu_ids"]) == 1
        assert replica["cuda_visible_devices"] == str(replica["gpu_ids"][0])
    half_gpus = {half["gpu_ids"][0] for half in halves}
    assert len(half_gpus) == 1, "the two halves share one GPU"
    assert half_gpus.isdisjoint(whole["gpu_ids"]), "the whole GPU is the whole replica's alone"
    for replica in survey["CpuOnly"]:
        assert replica["node_id"] in {ray_cluster.head_node_id, ray_cluster.gpu_node_id}
        assert (replica["device"], replica["gpu_ids"]) == ("cpu", [])
    assert {r["node_id"] for r in status["WholeGpu"]["replicas"]} == {ray_cluster.gpu_node_id}
    assert status["HalfGpu"]["resources"]["GPU"] == 0.5


def test_an_app_that_cannot_fit_fails_before_anything_is_deployed(ray_cluster: RayCluster) -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        sk.run(ray_apps.TooBig.bind(), backend="ray")
    message = str(caught.value)
    assert "no node has room for a replica of 'TooBig'" in message
    assert "TooBig: 1 x CPU 0.1, GPU 3" in message
    assert "GPU 2" in message, "the nodes are listed"
    assert "TooBig" not in serve.status().applications


def test_a_failing_constructor_fails_the_start_with_its_error(ray_cluster: RayCluster) -> None:
    started = time.monotonic()
    with pytest.raises(DeploymentStartError) as caught:
        sk.run(ray_apps.UsesBroken.bind(ray_apps.Broken.bind()), backend="ray", start_timeout_s=120)
    message = str(caught.value)
    assert "'Broken'" in message
    assert "weights not found at /models/missing.pt" in message
    assert time.monotonic() - started < 60
    assert "UsesBroken" not in serve.status().applications, "the failed app is deleted"


async def _load(handle: sk.DeploymentHandle, stop: asyncio.Event, errors: list[BaseException]) -> None:
    while not stop.is_set():
        try:
            await handle.work(0.2)
        except Exception as exc:
            errors.append(exc)
            return


async def _replicas_reach(handle: sk.AppHandle, deployment: str, want: int, within_s: float) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(handle.status)
        seen.append(status["deployments"][deployment]["running_replicas"])
        if seen[-1] == want:
            return seen
        await asyncio.sleep(0.25)
    raise AssertionError(f"{deployment} did not reach {want} running replicas in {within_s} s: {seen}")


@pytest.mark.parametrize("policy", ["ongoing_requests", "queue_depth"])
async def test_ray_autoscales_a_servekit_autoscaling_config(
    ray_cluster: RayCluster, on_ray: list[sk.AppHandle], policy: str
) -> None:
    busy = ray_apps.Busy.options(name=f"Busy_{policy}", autoscaling=ray_apps.scaling(policy))
    handle = sk.run(busy.bind(), backend="ray")
    on_ray.append(handle)
    status = handle.status()["deployments"][busy.name]
    assert status["running_replicas"] == 1
    custom = "servekit._runtime.ray.autoscaling:ServekitPolicy" in str(status["autoscaling"])
    assert custom == (policy != "ongoing_requests"), "servekit's own policy runs in Ray's controller"
    stop, errors = asyncio.Event(), []
    load = [asyncio.create_task(_load(handle, stop, errors)) for _ in range(6)]
    try:
        await _replicas_reach(handle, busy.name, 3, within_s=45)
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert errors == []
    await _replicas_reach(handle, busy.name, 1, within_s=45)


async def test_a_redeploy_under_load_rolls_without_failed_requests(
    ray_cluster: RayCluster, on_ray: list[sk.AppHandle], tmp_path: Path, await_until: Callable[..., Any]
) -> None:
    versioned = ray_apps.Versioned.options(num_replicas=2)
    handle = sk.run(versioned.bind("v1", str(tmp_path / "v1")), backend="ray")
    on_ray.append(handle)
    answers: list[Any] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                answers.append(await handle.label_of())
            except Exception as exc:
                answers.append(exc)

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    try:
        await await_until(lambda: len(answers) >= 10, "load before the redeploy")
        await asyncio.to_thread(handle.redeploy, versioned.bind("v2", str(tmp_path / "v2")))
        after_redeploy = len(answers)
        await await_until(lambda: len(answers) >= after_redeploy + 10, "load after the redeploy")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    failures = [answer for answer in answers if isinstance(answer, BaseException)]
    assert failures == []
    assert answers[0] == "v1"
    assert answers[-1] == "v2"
    assert set(answers) == {"v1", "v2"}


async def test_a_redeploy_that_only_scales_keeps_the_running_replicas(
    ray_cluster: RayCluster, on_ray: list[sk.AppHandle], tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    app = ray_apps.Versioned.options(name="Scaled", num_replicas=1)
    handle = sk.run(app.bind("same", str(marker)), backend="ray")
    on_ray.append(handle)
    before = {r["id"] for r in handle.status()["deployments"]["Scaled"]["replicas"]}
    await asyncio.to_thread(handle.redeploy, app.options(num_replicas=2).bind("same", str(marker)))
    after = {r["id"] for r in handle.status()["deployments"]["Scaled"]["replicas"]}
    assert len(after) == 2
    assert before < after, "the first replica kept running; one was added"


async def test_a_redeploy_that_changes_only_batching_reconfigures_the_running_replica(
    ray_cluster: RayCluster, on_ray: list[sk.AppHandle]
) -> None:
    app = ray_apps.Batched.options(batching={"double": sk.BatchOptions(max_batch_size=2)})
    handle = sk.run(app.bind(), backend="ray")
    on_ray.append(handle)
    before = await handle.batch_options()
    assert before["max_batch_size"] == 2, "the override applies when the replica starts"
    assert before["wait"] == "fill", "on Ray, batches fill their window under load by default"
    ids = {r["id"] for r in handle.status()["deployments"]["Batched"]["replicas"]}
    changed = app.options(batching={"double": sk.BatchOptions(max_batch_size=16, max_wait_ms=1)})
    await asyncio.to_thread(handle.redeploy, changed.bind())
    for _ in range(300):  # Ray reconfigures the replica once the redeploy lands: up to 30 s
        now = await handle.batch_options()
        if now["max_batch_size"] == 16:
            break
        await asyncio.sleep(0.1)
    assert now == {**before, "max_batch_size": 16, "max_wait_ms": 1.0}, "same process, new options"
    assert {r["id"] for r in handle.status()["deployments"]["Batched"]["replicas"]} == ids
    assert await asyncio.gather(*(handle.double(float(i)) for i in range(4))) == [0.0, 2.0, 4.0, 6.0]
