"""`/metrics` on every backend, parsed with prometheus_client's own parser: HTTP requests by route
template, calls per deployment method, batches, replicas and user metrics (from in-process
replicas, from worker processes, and on Ray through Ray's own metrics export)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import metrics_apps
import pytest
from behaviour_support import Backend, RayCluster
from prometheus_client.parser import text_string_to_metric_families

import servekit as sk

pytestmark = pytest.mark.integration

Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture(scope="module", params=["local", "local-process", "ray"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, sk.Server]]:
    """The metrics app on each backend: in-process replicas, worker processes, Ray Serve."""
    if request.param == "local-process":
        server = sk.serve(metrics_apps.metrics_app(), port=0, blocking=False, isolation="process")
    else:
        server = Backend(request.param, request).serve(metrics_apps.metrics_app())
    yield request.param, server
    server.shutdown(grace_s=5)


def scrape(client: httpx.Client, url: str) -> Samples:
    """Every sample at `url`, as prometheus_client's parser reads the text format."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())


async def test_metrics_count_requests_calls_batches_and_user_metrics(
    served: tuple[str, sk.Server],
    async_client: httpx.AsyncClient,
    client: httpx.Client,
    request: pytest.FixtureRequest,
    wait_until: Callable[..., None],
) -> None:
    backend, server = served
    responses = await asyncio.gather(*(async_client.get(f"{server.url}/score/{x}") for x in range(24)))
    assert [r.json()["y"] for r in responses] == [2.0 * x for x in range(24)]
    assert (await async_client.get(f"{server.url}/no/such/route")).status_code == 404
    assert server.metrics_url is not None
    found = await asyncio.to_thread(scrape, client, server.metrics_url)

    http = "servekit_http_requests_total"
    assert total(found, http, route="/score/{x}", method="GET", status="200") == 24
    assert total(found, http, route="<unmatched>", status="404") == 1
    assert not [labels for n, labels, _ in found if n == http and labels["route"].startswith("/score/1")]
    assert (
        total(found, "servekit_deployment_requests_total", deployment="Api", method="score", outcome="ok")
        == 24
    )
    assert total(found, "servekit_deployment_running_replicas", deployment="Scorer") == 1
    if backend == "ray":  # the Scorer's replicas are other actors: Ray's metrics export has them
        await asyncio.to_thread(
            assert_in_rays_export, request.getfixturevalue("ray_cluster"), client, wait_until
        )
        return
    assert (
        total(
            found, "servekit_deployment_request_duration_seconds_count", deployment="Scorer", method="score"
        )
        == 24
    )
    assert total(found, "servekit_batch_size_sum", deployment="Scorer", method="score") == 24
    assert 1 <= total(found, "servekit_batch_size_count", deployment="Scorer") < 24  # calls shared batches
    assert total(found, "servekit_batch_wait_seconds_count", deployment="Scorer") == 24
    assert total(found, "scorer_items_total", deployment="Scorer", replica="Scorer#0") == 24
    assert total(found, "scorer_items_total", parity="even") == 12
    assert total(found, "scorer_values_count", deployment="Scorer") == 24
    assert total(found, "scorer_values_bucket", le="10.0") == 11  # 0..10 of 0..23


def assert_in_rays_export(cluster: RayCluster, client: httpx.Client, wait_until: Callable[..., None]) -> None:
    """Ray's metrics agents (one per node) serve the same names, with Ray's `ray_` prefix."""
    import ray

    urls = [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node["Alive"]
    ]
    found: Samples = []

    def exported() -> bool:
        found[:] = [sample for url in urls for sample in scrape(client, url)]
        return (
            total(found, "ray_scorer_items_total", deployment="Scorer") >= 24
            and total(found, "ray_servekit_batch_size_count", deployment="Scorer") >= 1
            and total(found, "ray_servekit_http_requests_total", route="/score/{x}") >= 24
        )

    wait_until(exported, "servekit's metrics in Ray's metrics export", timeout_s=120)
    assert total(found, "ray_servekit_deployment_requests_total", deployment="Scorer", method="score") >= 24
    assert total(found, "ray_scorer_values_count", deployment="Scorer") >= 24
    replicas = {labels["replica"] for n, labels, _ in found if n == "ray_scorer_items_total"}
    assert all(replica.startswith("Scorer#") for replica in replicas), replicas


def test_an_unbounded_label_from_requests_is_refused_past_its_cap(
    served: tuple[str, sk.Server], client: httpx.Client
) -> None:
    backend, server = served
    statuses = [client.get(f"{server.url}/tag/t{index}").status_code for index in range(5)]
    assert statuses == [200, 200, 200, 500, 500]  # the user code's ValueError, never unbounded memory
    assert client.get(f"{server.url}/tag/t1").status_code == 200  # a known label set still records
    if backend != "ray":
        found = scrape(client, str(server.metrics_url))
        assert len([labels for n, labels, _ in found if n == "scorer_tags_total"]) == 3
