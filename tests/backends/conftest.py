"""The backends the behaviour suite runs on, and one real Ray cluster for the whole session.

The cluster is two Ray nodes on this machine (`ray.cluster_utils.Cluster`): a head without
GPUs and a worker node that declares two, with Ray Serve's proxy on a free port of the head.
Every Ray test deploys to it and deletes its apps afterwards; servekit joins it (this process
called `ray.init`), so it never starts or stops a Ray of its own here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import behaviour_apps as apps
import pytest
from behaviour_support import HANDLE_BACKENDS, HTTP_BACKENDS, Backend, RayCluster, ServedShop, free_port

import servekit as sk


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `ray` every test that runs on the Ray cluster: the Ray modules, the `ray` parameter of
    the backend-parametrized suites, and whatever uses the `ray_cluster` fixture (the hook sees
    the whole session's tests: it marks only those in this folder)."""
    here = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(here):
            continue
        callspec = getattr(item, "callspec", None)
        on_ray = (
            item.path.name.startswith("test_ray_")
            or "ray_cluster" in getattr(item, "fixturenames", ())
            or (callspec is not None and "ray" in [v for v in callspec.params.values() if isinstance(v, str)])
        )
        if on_ray:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (a CPU head, a node declaring 2 GPUs) with Serve's proxy on the head."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 8, "num_gpus": 0, "include_dashboard": False, "resources": {"head": 1}},
    )
    try:
        cluster.add_node(num_cpus=4, num_gpus=2, resources={"gpu_node": 1})
        ray.init(address=cluster.address, log_to_driver=True)
        nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
        head = next(node for node, resources in nodes.items() if "head" in resources)
        gpu = next(node for node, resources in nodes.items() if "gpu_node" in resources)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        yield RayCluster(cluster.address, port, head, gpu, cluster)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module", params=HANDLE_BACKENDS)
def front(request: pytest.FixtureRequest) -> Iterator[sk.AppHandle]:
    """The handle-level app (`apps.handle_app`), started once per backend for the module."""
    handle = Backend(request.param, request).run(apps.handle_app())
    yield handle
    handle.shutdown(grace_s=5)


@pytest.fixture(scope="module", params=HTTP_BACKENDS)
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedShop]:
    """The HTTP app (`apps.http_app`), served once per backend for the module."""
    gates = tmp_path_factory.mktemp("gates")
    server = Backend(request.param, request).serve(apps.http_app(gates), max_body_bytes=apps.BODY_LIMIT)
    yield ServedShop(server, gates, request.param)
    server.shutdown(grace_s=5)
