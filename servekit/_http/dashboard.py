"""`/-/dashboard`: a live page of the running app, and the history behind its charts.

In: the edge's `HttpMetrics` and the runtime's `status()`, sampled about once a second by
`DashboardHistory` into a ring buffer (so the charts have the last minutes on open), and the
changes between samples (scaling, restarts, failed health checks, errors, rollouts) as events.
Out: the page (`dashboard.html`, one file with its script and styles: no build step, no CDN) and
`/-/dashboard/data`, the JSON it polls (`?since=T` sends only the samples after T).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servekit._http.errors import error_response
from servekit._http.metrics import HttpMetrics
from servekit._runtime.interface import ServingRuntime
from servekit._telemetry.metrics import LATENCY_BUCKETS_S, quantile
from servekit.errors import BadRequestError

logger = logging.getLogger("servekit.dashboard")

SAMPLE_INTERVAL_S = 1.0
HISTORY_SAMPLES = 600
"""Ten minutes of samples at one a second."""
STATUS_REFRESH_S = 2.0
"""How often the sampler asks the runtime for fresh stats (worker processes, Ray's controller)
while someone watches the page."""
WATCH_TTL_S = 60.0
"""A page that polled `/-/dashboard/data` within this long counts as watched. Unwatched, the
sampler keeps the edge's request counters (rate and latency charts) and the runtime's
in-process view, but asks no worker process and no Ray controller for fresh stats: on Ray that
is a controller call every `STATUS_REFRESH_S` that an app nobody watches should not pay for."""
MAX_EVENTS = 200


class DashboardHistory:
    """The app sampled every `interval_s` (a ring of `size` samples) and the events seen meanwhile."""

    def __init__(
        self, http: HttpMetrics | None, interval_s: float = SAMPLE_INTERVAL_S, size: int = HISTORY_SAMPLES
    ) -> None:
        self.http = http
        self.interval_s = interval_s
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._last_http: tuple[float, int, int, list[int]] | None = None
        self._last_status: Mapping[str, Any] | None = None
        self._last_batches: dict[str, tuple[int, int]] = {}
        self._watched_until = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self, runtime: ServingRuntime) -> None:
        """Sample `runtime` in the background, on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(runtime), name="servekit-dashboard")

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def watched(self, now: float | None = None) -> None:
        """Note that the page polled its data: fresh stats are fetched for the next `WATCH_TTL_S`."""
        self._watched_until = (time.monotonic() if now is None else now) + WATCH_TTL_S

    def is_watched(self, now: float) -> bool:
        """Whether a page polled within the last `WATCH_TTL_S`."""
        return now < self._watched_until

    async def _run(self, runtime: ServingRuntime) -> None:
        refreshed = 0.0
        while True:
            now = time.monotonic()
            try:
                if self.is_watched(now) and now - refreshed >= STATUS_REFRESH_S:
                    refreshed = now
                    await runtime.refresh_stats()
                self.sample(runtime.status(), time.time(), now)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the dashboard could not sample the app")
            await asyncio.sleep(self.interval_s)

    def sample(self, status: Mapping[str, Any], at: float, now: float) -> dict[str, Any]:
        """Add one sample of `status` and the HTTP counters taken at `at` (wall) / `now` (monotonic)."""
        sample: dict[str, Any] = {"t": round(at, 3), **self._http_rates(now)}
        sample["deployments"] = {
            name: self._deployment_sample(name, deployment)
            for name, deployment in sorted((status.get("deployments") or {}).items())
        }
        self._note_changes(status, at)
        self._last_status = status
        self.samples.append(sample)
        return sample

    def _http_rates(self, now: float) -> dict[str, Any]:
        http = self.http
        if http is None:
            return {}
        counts = http.latency_counts()
        found: dict[str, Any] = {"requests": http.requests, "in_progress": http.in_progress}
        last = self._last_http
        self._last_http = (now, http.requests, http.server_errors, counts)
        if last is None or now <= last[0]:
            return found
        elapsed = now - last[0]
        new = [a - b for a, b in zip(counts, last[3], strict=True)]
        bounds = LATENCY_BUCKETS_S
        found["rps"] = round((http.requests - last[1]) / elapsed, 3)
        found["errors_per_s"] = round((http.server_errors - last[2]) / elapsed, 3)
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            value = quantile(bounds, new, q)
            found[name] = None if value is None else round(value * 1000, 3)
        return found

    def _deployment_sample(self, name: str, deployment: Mapping[str, Any]) -> dict[str, Any]:
        batches = items = 0
        for replica in deployment.get("replicas") or []:
            for stats in (replica.get("batching") or {}).values():
                batches += int(stats.get("batches", 0))
                items += int(stats.get("items", 0))
        last_batches, last_items = self._last_batches.get(name, (0, 0))
        self._last_batches[name] = (batches, items)
        new_batches = batches - last_batches
        return {
            "ongoing": deployment.get("ongoing"),
            "queued": deployment.get("queued"),
            "running": deployment.get("running_replicas"),
            "target": deployment.get("target_replicas"),
            "batch_size": round((items - last_items) / new_batches, 3) if new_batches > 0 else None,
        }

    def _note_changes(self, status: Mapping[str, Any], at: float) -> None:
        last = self._last_status
        if last is None:
            return
        if status.get("state") != last.get("state"):
            self._event(at, "app", None, f"the app is {status.get('state')} (was {last.get('state')})")
        before = last.get("deployments") or {}
        for name, now in (status.get("deployments") or {}).items():
            self._deployment_changes(at, name, before.get(name) or {}, now)
        before_routers = last.get("routers") or {}
        for name, router in (status.get("routers") or {}).items():
            self._router_changes(at, name, before_routers.get(name) or {}, router)

    def _deployment_changes(
        self, at: float, name: str, before: Mapping[str, Any], now: Mapping[str, Any]
    ) -> None:
        target, was = now.get("target_replicas"), before.get("target_replicas")
        if was is not None and target is not None and target != was:
            decision = now.get("autoscaling")
            reason = decision.get("reason") if isinstance(decision, Mapping) else None
            text = f"target {was} -> {target} replicas" + (f": {reason}" if reason else "")
            self._event(at, "scaling", name, text)
        for key, kind, text in (
            ("health_check_failures", "health", "a replica failed its health check"),
            ("restarts", "restart", "a replica was replaced"),
        ):
            if (now.get(key) or 0) > (before.get(key) or 0):
                detail = now.get("last_error")
                self._event(at, kind, name, text + (f": {detail}" if detail else ""))
        error = now.get("last_error")
        if error and error != before.get("last_error"):
            self._event(at, "error", name, str(error))

    def _router_changes(
        self, at: float, name: str, before: Mapping[str, Any], now: Mapping[str, Any]
    ) -> None:
        if before.get("weights") is not None and now.get("weights") != before.get("weights"):
            self._event(at, "router", name, f"weights {before.get('weights')} -> {now.get('weights')}")
        state = (now.get("canary") or {}).get("state")
        if state is not None and state != (before.get("canary") or {}).get("state"):
            self._event(at, "rollout", name, f"canary {state}")

    def _event(self, at: float, kind: str, subject: str | None, text: str) -> None:
        self.events.append({"at": round(at, 3), "kind": kind, "subject": subject, "text": text})

    def data(self, status: Mapping[str, Any], since: float | None) -> dict[str, Any]:
        """What the page shows: the app now, the samples after `since`, events and recent errors."""
        history = [sample for sample in self.samples if since is None or sample["t"] > since]
        http = self.http
        return {
            "interval_s": self.interval_s,
            "metrics": http is not None,
            "app": {key: status.get(key) for key in ("state", "ready", "ingress", "backend", "app")},
            "totals": {}
            if http is None
            else {"requests": http.requests, "server_errors": http.server_errors},
            "deployments": {
                name: _deployment_view(deployment)
                for name, deployment in sorted((status.get("deployments") or {}).items())
            },
            "routers": {
                name: _router_view(router) for name, router in sorted((status.get("routers") or {}).items())
            },
            "history": history,
            "events": list(self.events),
            "errors": [] if http is None else list(http.recent_errors),
        }


def _deployment_view(deployment: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "version", "isolation", "status", "target_replicas", "running_replicas", "starting_replicas",
        "ongoing", "queued", "rejected", "restarts", "health_check_failures", "last_error",
    )  # fmt: skip
    view = {key: deployment.get(key) for key in keys}
    view["replicas"] = [_replica_view(replica) for replica in deployment.get("replicas") or []]
    return view


def _replica_view(replica: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("id", "state", "device", "gpu_ids", "pid", "node_ip", "ongoing")
    view = {key: replica.get(key) for key in keys}
    view["batching"] = {
        method: {key: stats.get(key) for key in ("batches", "mean_batch_size", "mean_wait_ms", "queued")}
        for method, stats in (replica.get("batching") or {}).items()
    }
    return view


def _router_view(router: Mapping[str, Any]) -> dict[str, Any]:
    canary = router.get("canary") or {}
    return {
        "mode": router.get("mode"),
        "weights": router.get("weights"),
        "arms": {
            arm: {key: view.get(key) for key in ("deployment", "weight", "calls", "errors", "p95_ms")}
            for arm, view in (router.get("arms") or {}).items()
        },
        "canary": {key: canary.get(key) for key in ("state", "candidate_percent", "step")}
        if canary
        else None,
    }


@functools.cache
def page() -> str:
    """The dashboard page, shipped in the package (its script and styles inline)."""
    return resources.files("servekit._http").joinpath("dashboard.html").read_text(encoding="utf-8")


def dashboard_routes(runtime: ServingRuntime, history: DashboardHistory) -> list[BaseRoute]:
    """`GET /-/dashboard` (the page) and `GET /-/dashboard/data` (its JSON) for `runtime`."""

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page(), headers={"cache-control": "no-store"})

    async def data(request: Request) -> Response:
        since = request.query_params.get("since")
        try:
            after = float(since) if since else None
        except ValueError:
            message = f"query parameter since={since!r} must be a time in seconds, like since=1767225600.5"
            return error_response(BadRequestError(message))
        history.watched()
        return JSONResponse(history.data(runtime.status(), after), headers={"cache-control": "no-store"})

    return [
        Route("/-/dashboard", dashboard, methods=["GET"]),
        Route("/-/dashboard/data", data, methods=["GET"]),
    ]
