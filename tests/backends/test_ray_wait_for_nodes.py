"""The Ray backend when the app needs nodes the cluster does not have yet: with `wait_for_nodes`,
or on a cluster whose autoscaler publishes node groups that can hold the app, the start deploys
and waits (logging progress) until nodes join; else it fails at once, as before.

The node that "joins" is added to the test cluster (`ray.cluster_utils.Cluster.add_node`) from a
thread while the start waits. The autoscaler is stood in for by its record in the GCS: the
cluster config an autoscaler publishes (Ray's `ClusterConfig`, reported through the GCS
client's `report_cluster_config`, the call Ray's autoscaler v2 makes), which servekit reads
back the way it would on a real autoscaling cluster.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray_apps
from behaviour_support import RayCluster
from ray import serve
from ray.core.generated import autoscaler_pb2

import servekit as sk
from servekit._runtime.app import AppHandle
from servekit._runtime.ray import runtime as ray_runtime
from servekit.errors import InsufficientResourcesError

pytestmark = pytest.mark.integration

LATE_NODE = {"num_cpus": 1, "resources": {"late_node": 1}}


@pytest.fixture
def late_nodes(ray_cluster: RayCluster) -> Iterator[list[Any]]:
    """Nodes a test adds to the cluster; removed afterwards."""
    added: list[Any] = []
    yield added
    for node in added:
        ray_cluster.nodes.remove_node(node)


@pytest.fixture
def autoscaler_config(ray_cluster: RayCluster) -> Iterator[Callable[..., None]]:
    """Publish a cluster config in the GCS, as an autoscaler does; cleared afterwards."""

    def publish(*groups: tuple[str, dict[str, float], int]) -> None:
        config = autoscaler_pb2.ClusterConfig()
        for name, resources, max_count in groups:
            group = config.node_group_configs.add()
            group.name, group.max_count = name, max_count
            group.resources.update(resources)
        ray._private.worker.global_worker.gcs_client.report_cluster_config(config.SerializeToString())

    yield publish
    publish()


@pytest.fixture
def servekit_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """servekit's Ray log, with a wait's progress logged every half second."""
    monkeypatch.setattr(ray_runtime, "_PROGRESS_S", 0.5)
    caplog.set_level(logging.INFO, logger="servekit.ray")
    return caplog


def _start(app: sk.Application, **options: Any) -> AppHandle:
    return sk.run(app, backend="ray", **options)


def _start_while_a_node_joins(
    ray_cluster: RayCluster,
    log: pytest.LogCaptureFixture,
    added: list[Any],
    app: sk.Application,
    **options: Any,
) -> AppHandle:
    """Start `app` on a thread; once the start logs that it waits, add a `late_node` node (from
    this thread: Ray adds nodes only from the main thread) and return the started app."""
    started: list[AppHandle | BaseException] = []

    def start() -> None:
        try:
            started.append(_start(app, **options))
        except BaseException as exc:
            started.append(exc)

    thread = threading.Thread(target=start, name="start-app")
    thread.start()
    deadline = time.monotonic() + 60
    while not _progress(log) and not started and time.monotonic() < deadline:
        time.sleep(0.1)
    if _progress(log) and not started:
        added.append(ray_cluster.nodes.add_node(**LATE_NODE))
    thread.join(timeout=90)
    assert started, "the start neither ended nor failed"
    if isinstance(started[0], BaseException):
        raise started[0]
    return started[0]


def _progress(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if r.getMessage().startswith("waiting for ")]


def test_with_wait_for_nodes_the_start_waits_until_a_node_joins(
    ray_cluster: RayCluster, late_nodes: list[Any], servekit_log: pytest.LogCaptureFixture
) -> None:
    handle = _start_while_a_node_joins(
        ray_cluster,
        servekit_log,
        late_nodes,
        ray_apps.OnLateNode.bind(),
        wait_for_nodes=True,
        start_timeout_s=90,
    )
    try:
        assert len(late_nodes) == 1, "the start waited for the node"
        late_node_id = late_nodes[0].node_id
        assert handle().result(timeout=30) == late_node_id
        assert handle.status()["state"] == "running"
    finally:
        handle.shutdown(grace_s=2)
    progress = _progress(servekit_log)
    assert progress[0].startswith(
        "waiting for nodes to join: deployment 'OnLateNode' needs room for 1 more replica "
        "(CPU 0.1, late_node 1); 0/1 replicas running; "
    )
    assert progress[0].endswith(" s of 90 s")
    notice = next(r for r in servekit_log.records if "deploying anyway (wait_for_nodes)" in r.getMessage())
    assert notice.levelno == logging.WARNING
    assert "no node has room for a replica of 'OnLateNode'" in notice.getMessage()


def test_on_an_autoscaling_cluster_the_start_waits_for_the_nodes_it_can_add(
    ray_cluster: RayCluster,
    late_nodes: list[Any],
    autoscaler_config: Callable[..., None],
    servekit_log: pytest.LogCaptureFixture,
) -> None:
    autoscaler_config(("cpu-worker", {"CPU": 4}, 10), ("late-worker", {"CPU": 1, "late_node": 1}, 2))
    handle = _start_while_a_node_joins(  # no wait_for_nodes: the autoscaler's config is enough
        ray_cluster, servekit_log, late_nodes, ray_apps.OnLateNode.bind(), start_timeout_s=90
    )
    try:
        assert handle().result(timeout=30) == late_nodes[0].node_id
    finally:
        handle.shutdown(grace_s=2)
    assert _progress(servekit_log)[0].startswith("waiting for the Ray autoscaler: deployment 'OnLateNode' ")
    notice = next(r.getMessage() for r in servekit_log.records if "can add nodes it needs" in r.getMessage())
    assert "late-worker: CPU 1, late_node 1 (up to 2 more)" in notice


def test_an_autoscaler_that_cannot_add_such_nodes_fails_the_start_at_once(
    ray_cluster: RayCluster, autoscaler_config: Callable[..., None]
) -> None:
    autoscaler_config(("cpu-worker", {"CPU": 4}, 10))
    with pytest.raises(InsufficientResourcesError) as caught:
        sk.run(ray_apps.OnLateNode.bind(), backend="ray")
    message = str(caught.value)
    assert (
        "no node has room for a replica of 'OnLateNode', nor on the nodes its autoscaler can add" in message
    )
    assert "cpu-worker: CPU 4 (up to 10 more)" in message
    assert "OnLateNode" not in serve.status().applications


def test_without_an_autoscaler_or_wait_for_nodes_the_start_fails_at_once(ray_cluster: RayCluster) -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        sk.run(ray_apps.OnLateNode.bind(), backend="ray", start_timeout_s=600)
    assert "no node has room for a replica of 'OnLateNode'" in str(caught.value)
    assert "OnLateNode" not in serve.status().applications


def test_a_wait_for_nodes_that_runs_out_says_what_was_missing(ray_cluster: RayCluster) -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        _start(ray_apps.OnLateNode.bind(), wait_for_nodes=True, start_timeout_s=3)
    message = str(caught.value)
    assert message.startswith("Ray did not run app 'OnLateNode' within 3 s: the nodes it needs did not join")
    assert "deployment 'OnLateNode': 0/1 replicas running; one replica needs CPU 0.1, late_node 1" in message
    assert "cluster nodes (total resources):" in message
    assert "GPU 2" in message, "the nodes are listed"
    assert "no autoscaler runs on the cluster" in message
    assert "OnLateNode" not in serve.status().applications, "the app is deleted"


@pytest.mark.timeout(400)
def test_on_a_real_autoscaling_cluster_the_start_waits_for_the_node_the_autoscaler_launches(
    tmp_path: Path,
) -> None:
    """Ray's autoscaler (v1, fake node provider) launches the node while servekit waits; it
    runs in a process of its own (one Ray cluster per driver), see `autoscaling_cluster_run`.
    (The progress lines are pinned above, where the node joins only once one was logged; here a
    quick launch can beat the first one.)"""
    script = Path(__file__).with_name("autoscaling_cluster_run.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "result.json")],
        env=env,
        timeout=360,
        capture_output=True,
        check=False,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ran_on"].get("late_node") == 1, "the replica runs on the node the autoscaler added"
    assert result["log"][0].startswith(
        "the app does not fit the Ray cluster's nodes yet; the cluster's autoscaler (Ray autoscaler v1) "
        "can add nodes it needs: deploying and waiting up to 150 s for them"
    )
