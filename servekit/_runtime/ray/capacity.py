"""Whether a start on Ray waits for nodes: the cluster's nodes, its autoscaler, and the app's demand.

In: each deployment's demand (replicas x per-replica resources, from `options.demand`), the
alive nodes' total resources, what the cluster's autoscaler reports (parsed here from Ray's
own records: the cluster config an autoscaler publishes in the GCS, or autoscaler v1's
status), and whether the caller asked to wait for nodes. Out: `plan_start`'s verdict (deploy
at once; deploy and wait for nodes, saying why; or `InsufficientResourcesError`), and the
progress lines and timeout error of such a wait. Nothing here imports Ray or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servekit._runtime.ray.options import (
    describe_nodes,
    describe_resources,
    first_unfit,
    fit_message,
    replica_needs,
)
from servekit._spec.config import Resources
from servekit.errors import InsufficientResourcesError

Demands = Mapping[str, tuple[int, Resources]]
"""Each deployment's (replicas, per-replica resources)."""

V1_STATUS_STALE_S = 60.0
"""Autoscaler v1 rewrites its status every few seconds; one older than this is from a dead one."""


@dataclass(frozen=True)
class NodeGroup:
    """A kind of node the autoscaler can add: its resources and how many more it may launch."""

    name: str
    resources: Mapping[str, float]
    max_added: int | None
    """At most this many more nodes of the group (its max less its min, which run already);
    None when the group has no limit."""


@dataclass(frozen=True)
class AutoscalerView:
    """What a Ray cluster's autoscaler says it can do."""

    source: str
    """Where servekit read it, for messages."""
    groups: tuple[NodeGroup, ...] | None
    """The node groups it can add; None when it runs but does not publish them (autoscaler v1)."""
    max_resources: Mapping[str, float]
    """Caps on the cluster's total resources (empty: none)."""
    launching: tuple[str, ...] = ()
    """Nodes it is launching, like "1 x gpu-worker" (only autoscaler v1 reports them)."""

    def describe(self) -> list[str]:
        """Lines saying what it can add."""
        if self.groups is None:
            return [f"  the cluster's autoscaler ({self.source}) does not publish its node types"]
        lines = [f"  node groups the cluster's autoscaler can add ({self.source}):"]
        for group in self.groups:
            limit = "no limit" if group.max_added is None else f"up to {group.max_added} more"
            lines.append(f"    {group.name or 'unnamed'}: {describe_resources(group.resources)} ({limit})")
        if self.max_resources:
            lines.append(f"    cluster total capped at {describe_resources(self.max_resources)}")
        return lines


@dataclass(frozen=True)
class NodeWait:
    """A start that deploys although the nodes cannot hold the app yet, and waits for more."""

    waiting_for: str
    """What the progress lines say it waits for, like "the Ray autoscaler"."""
    notice: str
    """What to log once, before deploying."""
    warn: bool
    """Whether the notice is a warning (the caller asked to wait; no autoscaler was seen)."""


# -- reading what the autoscaler reports ----------------------------------------------------------


def view_from_cluster_config(config: Mapping[str, Any]) -> AutoscalerView | None:
    """The autoscaler's view from Ray's cluster config (`autoscaler_pb2.ClusterConfig` as a dict:
    ``node_group_configs`` with ``name``, ``resources``, ``min_count``, ``max_count``; and
    ``max_resources``). None when no group can add a node.

    A `max_count` of -1 means no limit. A group adds at most `max_count - min_count` nodes (its
    `min_count` nodes run already, among the alive ones); one that cannot grow, or has no
    resources, adds nothing.
    """
    groups = []
    for group in config.get("node_group_configs", ()):
        max_count, min_count = int(group.get("max_count", 0)), int(group.get("min_count", 0))
        resources = {key: float(amount) for key, amount in dict(group.get("resources", {})).items()}
        if (0 <= max_count <= min_count) or not resources:
            continue
        added = None if max_count < 0 else max_count - min_count
        groups.append(NodeGroup(str(group.get("name", "")), resources, added))
    if not groups:
        return None
    caps = {key: float(amount) for key, amount in dict(config.get("max_resources", {})).items()}
    return AutoscalerView("Ray's cluster config", tuple(groups), caps)


def view_from_v1_status(status: Mapping[str, Any], now: float) -> AutoscalerView | None:
    """The autoscaler's view from autoscaler v1's status (the JSON it keeps in Ray's KV store
    under ``__autoscaling_status``, what `ray status` prints). None unless an autoscaler with a
    node provider reported within `V1_STATUS_STALE_S` of `now` (wall-clock seconds).

    Every Ray head runs autoscaler v1's monitor; without an autoscaling config it only mirrors
    the nodes, each as a node type named ``node_<node id>``: that is not an autoscaler.
    """
    report = status.get("autoscaler_report")
    if not isinstance(report, Mapping) or now - float(status.get("time", 0.0)) > V1_STATUS_STALE_S:
        return None
    types = dict(report.get("node_type_mapping") or {})
    if types and all(node_type == f"node_{node}" for node, node_type in types.items()):
        return None
    launching = [f"{count} x {kind}" for kind, count in dict(report.get("pending_launches") or {}).items()]
    launching += [f"1 x {pending[-2]} ({pending[-1]})" for pending in report.get("pending_nodes") or ()]
    return AutoscalerView("Ray autoscaler v1", None, {}, tuple(launching))


# -- deciding -----------------------------------------------------------------------------------


def fits_once_scaled(demands: Demands, nodes: list[dict[str, float]], autoscaler: AutoscalerView) -> bool:
    """Whether every replica would fit once the autoscaler added the nodes it may (None groups:
    unknown, taken as yes).

    A group's nodes beyond its minimum that run already are counted twice (servekit cannot tell
    which group an alive node belongs to), so this errs towards waiting; the wait is bounded by
    the start timeout.
    """
    if autoscaler.groups is None:
        return True
    if not _within_caps(demands, autoscaler.max_resources):
        return False
    replicas = sum(count for count, _ in demands.values())
    added = [
        dict(group.resources)
        for group in autoscaler.groups
        for _ in range(replicas if group.max_added is None else min(group.max_added, replicas))
    ]
    return first_unfit(demands, [*nodes, *added]) is None


def plan_start(
    demands: Demands,
    nodes: list[dict[str, float]],
    autoscaler: AutoscalerView | None,
    *,
    wait_for_nodes: bool,
    timeout_s: float,
) -> NodeWait | None:
    """None when the app fits the alive nodes now; a `NodeWait` when it does not but the
    autoscaler can add nodes that make it fit, or the caller asked to wait for nodes; else
    raises `InsufficientResourcesError` with the demand, the nodes and the autoscaler's groups."""
    unfit = first_unfit(demands, nodes)
    if unfit is None:
        return None
    shortfall = fit_message(demands, nodes, unfit)
    if autoscaler is not None and fits_once_scaled(demands, nodes, autoscaler):
        return NodeWait(
            "the Ray autoscaler",
            f"the app does not fit the Ray cluster's nodes yet; the cluster's autoscaler "
            f"({autoscaler.source}) can add nodes it needs: deploying and waiting up to "
            f"{timeout_s:g} s for them\n" + _details(shortfall, autoscaler),
            warn=False,
        )
    if wait_for_nodes:
        return NodeWait(
            "nodes to join",
            f"{_first_line(shortfall)}; deploying anyway (wait_for_nodes) and waiting up to "
            f"{timeout_s:g} s for nodes to join\n" + _details(shortfall, autoscaler),
            warn=True,
        )
    if autoscaler is not None:
        lines = [shortfall.splitlines()[0] + ", nor on the nodes its autoscaler can add"]
        lines += shortfall.splitlines()[1:-1] + autoscaler.describe() + shortfall.splitlines()[-1:]
        raise InsufficientResourcesError("\n".join(lines))
    raise InsufficientResourcesError(shortfall)


# -- while waiting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Short:
    """A deployment with fewer replicas running than it asks for."""

    name: str
    running: int
    target: int
    needs: Mapping[str, float]
    """One replica's resources."""


def short_of(
    demands: Demands, running: Mapping[str, int], needs: Mapping[str, Mapping[str, float]]
) -> list[Short]:
    """The deployments of `demands` with fewer than their replicas `running`."""
    return [
        Short(name, running.get(name, 0), replicas, needs[name])
        for name, (replicas, _) in demands.items()
        if running.get(name, 0) < replicas
    ]


def progress_line(
    wait: NodeWait, short: Sequence[Short], elapsed_s: float, timeout_s: float, launching: Sequence[str] = ()
) -> str:
    """One log line on a wait for nodes, like "waiting for the Ray autoscaler: deployment 'Model'
    needs room for 1 more replica (CPU 1, GPU 1); 0/1 replicas running; 40 s of 600 s"."""
    parts = [
        f"deployment {s.name!r} needs room for {s.target - s.running} more "
        f"{_replicas(s.target - s.running)} ({describe_resources(s.needs) or 'nothing'}); "
        f"{s.running}/{s.target} replicas running"
        for s in short
    ] or ["every replica is placed; waiting for them to start"]
    if launching:
        parts.append(f"the autoscaler is launching {', '.join(launching)}")
    return f"waiting for {wait.waiting_for}: {'; '.join(parts)}; {math.floor(elapsed_s)} s of {timeout_s:g} s"


def timeout_message(
    app: str,
    timeout_s: float,
    short: Sequence[Short],
    nodes: list[dict[str, float]],
    autoscaler: AutoscalerView | None,
) -> str:
    """The error of a wait for nodes that ran out: what each deployment lacked and what the cluster has."""
    lines = [f"Ray did not run app {app!r} within {timeout_s:g} s: the nodes it needs did not join"]
    for s in short:
        lines.append(
            f"  deployment {s.name!r}: {s.running}/{s.target} replicas running; one "
            f"replica needs {describe_resources(s.needs) or 'nothing'}"
        )
    lines += describe_nodes(nodes)
    lines += autoscaler.describe() if autoscaler is not None else ["  no autoscaler runs on the cluster"]
    lines.append("Add nodes with those resources (or let the autoscaler add them), or raise start_timeout_s.")
    return "\n".join(lines)


def _within_caps(demands: Demands, caps: Mapping[str, float]) -> bool:
    totals: dict[str, float] = {}
    for replicas, resources in demands.values():
        for key, amount in replica_needs(resources).items():
            totals[key] = totals.get(key, 0.0) + replicas * amount
    return all(totals.get(key, 0.0) <= cap + 1e-9 for key, cap in caps.items())


def _details(shortfall: str, autoscaler: AutoscalerView | None) -> str:
    lines = shortfall.splitlines()[1:-1]
    if autoscaler is not None:
        lines += autoscaler.describe()
    return "\n".join(lines)


def _first_line(text: str) -> str:
    return text.splitlines()[0]


def _replicas(count: int) -> str:
    return "replica" if count == 1 else "replicas"
