"""`serve()`'s metrics options on a real server: `/metrics` on its own port, metrics off (no layer,
no route), counters kept across a redeploy, an endpoint that would be hidden, and the CLI flags."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import servekit as sk
from servekit._http.app import build_asgi_app
from servekit._http.metrics import HttpMetricsMiddleware
from servekit._http.telemetry import EdgeTelemetry, TelemetryOptions
from servekit._runtime.local.runtime import LocalRuntime
from servekit._spec.graph import build_graph
from servekit.errors import DeploymentOptionError

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent / "apps"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]


@sk.deployment
class Echo:
    @sk.endpoint("/echo/{word}", methods=["GET"])
    async def echo(self, word: str) -> dict[str, str]:
        return {"word": word}


@sk.deployment
class Shadowing:
    @sk.endpoint("/metrics", methods=["GET"])
    async def mine(self) -> str:
        return "my own metrics"


def http_requests(text: str, route: str) -> float:
    """The `servekit_http_requests_total` samples of `route`, summed, from a scrape's text."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "servekit_http_requests_total" and sample.labels["route"] == route
    )


def test_metrics_on_their_own_port_leave_the_apps_port(client: httpx.Client) -> None:
    with sk.serve(Echo.bind(), port=0, blocking=False, metrics_port=0) as server:
        assert client.get(server.url + "/echo/hi").json() == {"word": "hi"}
        assert server.metrics_url is not None
        assert not server.metrics_url.startswith(server.url + "/")
        assert client.get(server.url + "/metrics").status_code == 404
        scraped = client.get(server.metrics_url)
        assert scraped.status_code == 200
        assert http_requests(scraped.text, "/echo/{word}") == 1
        assert client.get(server.url + "/-/dashboard").status_code == 200


def test_metrics_off_install_no_layer_and_no_route(client: httpx.Client) -> None:
    with sk.serve(Echo.bind(), port=0, blocking=False, metrics=False) as server:
        assert server.metrics_url is None
        assert client.get(server.url + "/echo/hi").status_code == 200
        assert client.get(server.url + "/metrics").status_code == 404
        assert client.get(server.url + "/-/dashboard").status_code == 404
    runtime = LocalRuntime(build_graph(Echo.bind()))
    off = build_asgi_app(runtime, telemetry=EdgeTelemetry(TelemetryOptions(metrics=False)))
    on = build_asgi_app(runtime)
    assert HttpMetricsMiddleware not in [m.cls for m in off.user_middleware]
    assert HttpMetricsMiddleware in [m.cls for m in on.user_middleware]
    with pytest.raises(DeploymentOptionError, match="dashboard=True needs metrics=True"):
        sk.serve(Echo.bind(), port=0, blocking=False, metrics=False, dashboard=True)


def test_metrics_port_is_refused_on_ray_before_anything_starts() -> None:
    with pytest.raises(DeploymentOptionError, match="metrics_port=9100 works on the local backend only"):
        sk.serve(Echo.bind(), port=0, blocking=False, backend="ray", metrics_port=9100)


async def anything(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@sk.deployment
@sk.ingress(Starlette(routes=[Route("/anything/{rest:path}", anything)]))
class Mounted:
    pass


def test_an_ingress_asgi_apps_requests_share_one_route_label(client: httpx.Client) -> None:
    with sk.serve(Mounted.bind(), port=0, blocking=False) as server:
        for path in ("/anything/a", "/anything/b/c", "/missing"):
            client.get(server.url + path)
        text = client.get(str(server.metrics_url)).text
        assert http_requests(text, "<ingress app>") == 3
        assert http_requests(text, "/anything/{rest:path}") == 0


def test_counters_survive_a_redeploy(client: httpx.Client) -> None:
    with sk.serve(Echo.bind(), port=0, blocking=False) as server:
        client.get(server.url + "/echo/a")
        server.redeploy(Echo.options(version="2").bind())
        client.get(server.url + "/echo/b")
        assert http_requests(client.get(str(server.metrics_url)).text, "/echo/{word}") == 2


def test_an_endpoint_that_metrics_would_hide_is_refused_unless_metrics_move() -> None:
    with pytest.raises(DeploymentOptionError, match="endpoint '/metrics' of 'Shadowing' clashes"):
        sk.serve(Shadowing.bind(), port=0, blocking=False)
    with sk.serve(Shadowing.bind(), port=0, blocking=False, metrics_port=0, dashboard=False) as server:
        assert httpx.get(server.url + "/metrics").text == "my own metrics"


def test_the_cli_serves_metrics_on_the_port_it_prints(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "servekit", "serve", "greeter.py:app", "--port", "0",
               "--metrics-port", "0", "--no-dashboard"]  # fmt: skip
    env = {"PYTHONPATH": str(SOURCE_TREE), "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=APPS, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        pattern = re.compile(r"serving \S+ at (\S+)\n.*metrics: (\S+)\n", re.DOTALL)
        deadline = time.monotonic() + 30
        while (found := pattern.search(log.read_text())) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url, metrics_url = found.groups()
        assert "/metrics" not in log.read_text().split("built-in:")[1].splitlines()[0]
        assert httpx.get(url + "/greet", timeout=10).status_code == 200
        assert httpx.get(url + "/-/dashboard", timeout=10).status_code == 404
        assert http_requests(httpx.get(metrics_url, timeout=10).text, "/greet") == 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_dashboards_data_has_the_app_and_refuses_a_bad_since(
    client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    with sk.serve(Echo.bind(), port=0, blocking=False) as server:
        client.get(server.url + "/echo/a")
        page = client.get(server.url + "/-/dashboard")
        assert page.headers["content-type"].startswith("text/html")
        assert "<script>" in page.text
        assert "http://" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere
        wait_until(lambda: client.get(server.url + "/-/dashboard/data").json()["history"], "a first sample")
        data = client.get(server.url + "/-/dashboard/data").json()
        assert data["app"]["state"] == "running"
        assert data["deployments"]["Echo"]["replicas"][0]["id"] == "Echo#0"
        assert data["totals"]["requests"] >= 1
        last = data["history"][-1]["t"]
        later = client.get(server.url + f"/-/dashboard/data?since={last}").json()["history"]
        assert all(sample["t"] > last for sample in later)
        refused = client.get(server.url + "/-/dashboard/data?since=yesterday")
        assert refused.status_code == 400
        assert "since='yesterday'" in refused.json()["error"]["message"]
        client.get(server.url + "/-/status")
        scraped = client.get(str(server.metrics_url)).text
        assert http_requests(scraped, "/-/dashboard/data") >= 3  # admin routes by template too
        assert http_requests(scraped, "/-/status") == 1
