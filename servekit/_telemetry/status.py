"""The running app's state as metric families, read from its status document at scrape time.

In: a runtime's `status()` (the `/-/status` document; every backend writes the same shape, each
with the parts it knows). Out: the families of deployments, replicas, autoscaling and routers
(`servekit._telemetry.metrics.FAMILIES`; batches come from the queues themselves:
`servekit._replica.batch_metrics`). Nothing is recorded on the request path for
these: the numbers already live in the runtime's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import Metric

from servekit._telemetry.metrics import new_family

_DEPLOYMENT_GAUGES = {
    "servekit_deployment_ongoing_requests": "ongoing",
    "servekit_deployment_queued_requests": "queued",
    "servekit_deployment_target_replicas": "target_replicas",
    "servekit_deployment_running_replicas": "running_replicas",
    "servekit_deployment_starting_replicas": "starting_replicas",
}
_DEPLOYMENT_COUNTERS = {
    "servekit_deployment_rejected_requests_total": "rejected",
    "servekit_deployment_replica_restarts_total": "restarts",
    "servekit_deployment_health_check_failures_total": "health_check_failures",
}
_FAMILIES = (
    "servekit_app_ready",
    *_DEPLOYMENT_GAUGES,
    *_DEPLOYMENT_COUNTERS,
    "servekit_autoscaling_decisions_total",
    "servekit_autoscaling_desired_replicas",
    "servekit_replica_ongoing_requests",
    "servekit_replica_info",
    "servekit_router_weight",
    "servekit_router_requests_total",
    "servekit_rollout_state",
    "servekit_rollout_candidate_percent",
)


class _Families:
    """The families being filled, by name."""

    def __init__(self) -> None:
        self.by_name = {name: new_family(name) for name in _FAMILIES}

    def add(self, name: str, labels: list[str], value: Any) -> None:
        """One sample of a counter or gauge, when `value` is a number."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.by_name[name].add_metric(labels, value)  # type: ignore[attr-defined]

    def non_empty(self) -> list[Metric]:
        """The families that got samples."""
        return [family for family in self.by_name.values() if family.samples]


def status_families(status: Mapping[str, Any]) -> list[Metric]:
    """The families that `status` (a runtime's status document) gives."""
    families = _Families()
    if "ready" in status:
        families.add("servekit_app_ready", [], 1 if status["ready"] else 0)
    for name, deployment in sorted((status.get("deployments") or {}).items()):
        _deployment(families, name, deployment)
    for name, router in sorted((status.get("routers") or {}).items()):
        _router(families, name, router)
    return families.non_empty()


def _deployment(families: _Families, name: str, deployment: Mapping[str, Any]) -> None:
    for family, key in {**_DEPLOYMENT_GAUGES, **_DEPLOYMENT_COUNTERS}.items():
        families.add(family, [name], deployment.get(key))
    for direction, count in sorted((deployment.get("scaling_decisions") or {}).items()):
        families.add("servekit_autoscaling_decisions_total", [name, direction], count)
    decision = deployment.get("autoscaling")
    if isinstance(decision, Mapping) and "desired" in decision:
        families.add("servekit_autoscaling_desired_replicas", [name], decision["desired"])
    for replica in deployment.get("replicas") or []:
        _replica(families, name, replica)


def _replica(families: _Families, deployment: str, replica: Mapping[str, Any]) -> None:
    replica_id = str(replica.get("id", ""))
    if replica.get("state", "running") == "running":
        families.add("servekit_replica_info", [deployment, replica_id, str(replica.get("device") or "")], 1)
    families.add("servekit_replica_ongoing_requests", [deployment, replica_id], replica.get("ongoing"))


def _router(families: _Families, name: str, router: Mapping[str, Any]) -> None:
    for arm, view in sorted((router.get("arms") or {}).items()):
        families.add("servekit_router_weight", [name, arm], view.get("weight"))
        calls, errors = view.get("calls"), view.get("errors")
        if isinstance(calls, int) and isinstance(errors, int):
            families.add("servekit_router_requests_total", [name, arm, "ok"], calls - errors)
            families.add("servekit_router_requests_total", [name, arm, "error"], errors)
    canary = router.get("canary")
    if isinstance(canary, Mapping) and canary.get("state"):
        families.add("servekit_rollout_state", [name, str(canary["state"])], 1)
        families.add("servekit_rollout_candidate_percent", [name], canary.get("candidate_percent"))
