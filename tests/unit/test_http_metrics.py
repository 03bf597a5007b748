"""The edge's metrics layer (route templates, statuses, errors), the families read from a status
document, the dashboard's history and events, and the telemetry options."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from servekit._http.dashboard import WATCH_TTL_S, DashboardHistory
from servekit._http.metrics import UNMATCHED, HttpMetrics, HttpMetricsMiddleware
from servekit._http.telemetry import EdgeTelemetry, TelemetryOptions
from servekit._telemetry.metrics import render
from servekit._telemetry.status import status_families
from servekit.errors import DeploymentOptionError


def parsed(families: list[Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} as prometheus_client's parser reads `families`."""
    body, _ = render(families)
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


class RefuseSecret:
    """Answers 401 for /secret/... before routing, as an auth layer would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/secret"):
            await JSONResponse({"error": "no"}, 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["item_id"]})


async def boom(request: Request) -> Response:
    raise RuntimeError("broken")


@pytest.fixture
def counted() -> tuple[HttpMetrics, Starlette]:
    metrics = HttpMetrics()
    routes = [
        Route("/items/{item_id}", item, methods=["GET"]),
        Route("/boom", boom, methods=["GET"]),
        Route("/secret/{name}", item, methods=["GET"]),
    ]
    middleware = [
        Middleware(HttpMetricsMiddleware, metrics=metrics, routes=routes),
        Middleware(RefuseSecret),
    ]
    return metrics, Starlette(routes=routes, middleware=middleware)


async def test_requests_are_labelled_by_route_template_method_and_status(
    counted: tuple[HttpMetrics, Starlette],
) -> None:
    metrics, app = counted
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for index in range(3):
            assert (await client.get(f"/items/{index}")).status_code == 200
        assert (await client.post("/items/1")).status_code == 405
        assert (await client.get("/nowhere/at/all")).status_code == 404
        assert (await client.get("/secret/x")).status_code == 401
        assert (await client.request("BREW", "/items/1")).status_code == 405
        assert (await client.get("/boom", headers={"x-request-id": "abc"})).status_code == 500
    found = parsed(metrics.families())
    requests = {
        (labels["route"], labels["method"], labels["status"]): value
        for labels, value in found["servekit_http_requests_total"]
    }
    assert requests == {
        ("/items/{item_id}", "GET", "200"): 3.0,
        ("/items/{item_id}", "POST", "405"): 1.0,
        ("/items/{item_id}", "OTHER", "405"): 1.0,
        (UNMATCHED, "GET", "404"): 1.0,
        ("/secret/{name}", "GET", "401"): 1.0,  # refused before routing: matched here
        ("/boom", "GET", "500"): 1.0,
    }
    counts = {
        labels["route"]: value
        for labels, value in found["servekit_http_request_duration_seconds_count"]
        if labels["method"] == "GET"
    }
    assert counts["/items/{item_id}"] == 3.0
    assert found["servekit_http_requests_in_progress"] == [({}, 0.0)]
    (error,) = metrics.recent_errors
    assert (error["route"], error["status"], error["request_id"]) == ("/boom", 500, "abc")
    assert metrics.requests == 8
    assert metrics.server_errors == 1


LOCAL_STATUS: dict[str, Any] = {
    "state": "running",
    "ready": True,
    "deployments": {
        "Model": {
            "target_replicas": 2,
            "running_replicas": 2,
            "starting_replicas": 0,
            "ongoing": 3,
            "queued": 1,
            "rejected": 4,
            "restarts": 1,
            "health_check_failures": 1,
            "scaling_decisions": {"up": 2, "down": 1},
            "autoscaling": {"desired": 2, "reason": "load", "at": 1.0},
            "replicas": [
                {
                    "id": "Model#0",
                    "state": "running",
                    "device": "cuda:0",
                    "ongoing": 3,
                },
                {"id": "Model#1", "state": "unhealthy", "device": "cpu", "ongoing": 0},
            ],
        }
    },
    "routers": {
        "clf": {
            "arms": {
                "v1": {"weight": 90.0, "calls": 10, "errors": 1},
                "v2": {"weight": 10.0, "calls": 2, "errors": 0},
            },
            "canary": {"state": "running", "candidate_percent": 10.0},
        }
    },
}


def test_status_gives_deployment_replica_autoscaling_and_router_families() -> None:
    found = parsed(status_families(LOCAL_STATUS))
    model = {"deployment": "Model"}
    assert found["servekit_app_ready"] == [({}, 1.0)]
    for name, value in [
        ("servekit_deployment_target_replicas", 2.0),
        ("servekit_deployment_ongoing_requests", 3.0),
        ("servekit_deployment_queued_requests", 1.0),
        ("servekit_deployment_rejected_requests_total", 4.0),
        ("servekit_deployment_replica_restarts_total", 1.0),
        ("servekit_deployment_health_check_failures_total", 1.0),
        ("servekit_autoscaling_desired_replicas", 2.0),
    ]:
        assert found[name] == [(model, value)], name
    assert ({"deployment": "Model", "direction": "up"}, 2.0) in found["servekit_autoscaling_decisions_total"]
    assert found["servekit_replica_info"] == [
        ({"deployment": "Model", "replica": "Model#0", "device": "cuda:0"}, 1.0)
    ]
    assert ({"deployment": "Model", "replica": "Model#0"}, 3.0) in found["servekit_replica_ongoing_requests"]
    assert ({"router": "clf", "arm": "v1"}, 90.0) in found["servekit_router_weight"]
    assert ({"router": "clf", "arm": "v1", "outcome": "error"}, 1.0) in found[
        "servekit_router_requests_total"
    ]
    assert found["servekit_rollout_state"] == [({"router": "clf", "state": "running"}, 1.0)]
    assert found["servekit_rollout_candidate_percent"] == [({"router": "clf"}, 10.0)]


def test_a_ray_status_document_gives_what_it_has_and_nothing_else() -> None:
    ray_status = {
        "state": "running",
        "ready": True,
        "deployments": {
            "Api": {
                "target_replicas": 1,
                "running_replicas": 1,
                "autoscaling": {"min_replicas": 1},  # Ray's config, not a decision
                "replicas": [{"id": "Api#abc", "state": "running", "pid": 7}],
            }
        },
    }
    found = parsed(status_families(ray_status))
    assert "servekit_autoscaling_desired_replicas" not in found
    assert "servekit_deployment_queued_requests" not in found
    assert found["servekit_deployment_running_replicas"] == [({"deployment": "Api"}, 1.0)]
    assert found["servekit_replica_info"] == [
        ({"deployment": "Api", "replica": "Api#abc", "device": ""}, 1.0)
    ]


def with_deployment(target: int, restarts: int = 0, error: str | None = None) -> dict[str, Any]:
    replica = {
        "id": "M#0",
        "state": "running",
        "batching": {"f": {"batches": 10 * target, "items": 40 * target}},
    }
    deployment = {
        "target_replicas": target,
        "running_replicas": target,
        "ongoing": 2,
        "queued": 0,
        "restarts": restarts,
        "last_error": error,
        "autoscaling": {"desired": target, "reason": "ongoing requests above target"},
        "replicas": [replica],
    }
    return {"state": "running", "ready": True, "deployments": {"M": deployment}}


def test_the_history_samples_rates_and_percentiles_and_notes_what_changed() -> None:
    http = HttpMetrics()
    history = DashboardHistory(http, size=3)
    history.sample(with_deployment(1), 1000.0, 10.0)
    for _ in range(20):
        http.record("/x", "GET", 200, 0.004, {"headers": []})
    second = history.sample(with_deployment(2, restarts=1, error="replica M#1 exited"), 1002.0, 12.0)
    assert second["rps"] == 10.0
    assert 2.5 < second["p50_ms"] <= 5.0
    assert second["deployments"]["M"]["batch_size"] == 4.0
    kinds = [(event["kind"], event["subject"]) for event in history.events]
    assert kinds == [("scaling", "M"), ("restart", "M"), ("error", "M")]
    assert history.events[0]["text"] == "target 1 -> 2 replicas: ongoing requests above target"
    for second_at in (1003.0, 1004.0, 1005.0):
        history.sample(with_deployment(2, restarts=1, error="replica M#1 exited"), second_at, second_at - 990)
    assert [sample["t"] for sample in history.samples] == [1003.0, 1004.0, 1005.0]  # a ring of 3
    data = history.data(with_deployment(2), since=1003.5)
    assert [sample["t"] for sample in data["history"]] == [1004.0, 1005.0]
    assert data["totals"] == {"requests": 20, "server_errors": 0}
    assert data["deployments"]["M"]["replicas"][0]["id"] == "M#0"


class _CountingRuntime:
    """A runtime whose fresh stats cost a call (a Ray controller, worker processes): counted."""

    def __init__(self) -> None:
        self.refreshes = 0

    async def refresh_stats(self) -> None:
        self.refreshes += 1

    def status(self) -> dict[str, Any]:
        return with_deployment(1)


async def test_the_sampler_fetches_fresh_stats_only_while_a_page_watches(
    await_until: Callable[..., Awaitable[None]],
) -> None:
    runtime = _CountingRuntime()
    history = DashboardHistory(HttpMetrics(), interval_s=0.001)
    history.start(runtime)  # type: ignore[arg-type]
    try:
        await await_until(lambda: len(history.samples) >= 20, "samples while nobody watches")
        assert runtime.refreshes == 0  # the request counters are sampled; no controller is asked
        history.watched()
        await await_until(lambda: runtime.refreshes >= 1, "a refresh once the page polls")
        assert history.is_watched(time.monotonic())
        assert not history.is_watched(time.monotonic() + WATCH_TTL_S)
    finally:
        await history.stop()


def test_telemetry_options_refuse_contradictions_and_off_means_nothing_installed() -> None:
    with pytest.raises(DeploymentOptionError, match="dashboard=True needs metrics=True"):
        TelemetryOptions(metrics=False, dashboard=True)
    with pytest.raises(DeploymentOptionError, match="metrics_port is set but metrics=False"):
        TelemetryOptions(metrics=False, metrics_port=9100)
    with pytest.raises(DeploymentOptionError, match="metrics_port=70000 must be a port number"):
        TelemetryOptions(metrics_port=70000)
    off = EdgeTelemetry(TelemetryOptions(metrics=False))
    assert (off.http, off.history) == (None, None)
    assert off.middleware([]) == []
    assert TelemetryOptions(dashboard=False).dashboard_on is False
    assert TelemetryOptions().dashboard_on is True
