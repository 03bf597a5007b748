"""What the local runtime tracks per deployment: its replicas, target, failures and scaling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.autoscaling import Autoscaler, ScalingDecision
from servekit._replica.latency import LatencyWindow
from servekit._replica.replica import user_method
from servekit._runtime.replica_set import ReplicaSet
from servekit._spec.config import Isolation
from servekit._spec.endpoint import is_idempotent
from servekit._spec.graph import DeploymentNode
from servekit._telemetry.metrics import MethodCalls

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass(eq=False)
class DeploymentState:
    """One deployment of a running app, as the runtime and its controller see it."""

    node: DeploymentNode
    replicas: ReplicaSet
    target: int
    isolation: Isolation
    fingerprint: str
    """Code, options and arguments as deployed; a redeploy rolls the replicas when it differs."""
    autoscaler: Autoscaler | None = None
    starting: int = 0
    restarts: int = 0
    """Replicas started to replace ones that died or failed health checks."""
    start_failures: int = 0
    """Consecutive failed starts; drives the backoff and resets on a successful start."""
    health_check_failures: int = 0
    """Health checks that failed or timed out."""
    scaled: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    """Autoscaling decisions that changed the target, by direction."""
    next_start_at: float = 0.0
    last_error: str | None = None
    updating: bool = False
    latencies: LatencyWindow = field(default_factory=LatencyWindow)
    """Latencies of recent calls, drained into each autoscaling sample; bounded in size."""
    calls: MethodCalls = field(default_factory=MethodCalls)
    """Every call's latency and outcome, per method (for `/metrics`); survives redeploys."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _idempotent: dict[str, bool] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The deployment's name in the graph."""
        return self.node.name

    @property
    def running(self) -> int:
        """Replicas taking requests."""
        return len(self.replicas.slots)

    @property
    def last_decision(self) -> ScalingDecision | None:
        """The autoscaler's most recent decision."""
        return self.autoscaler.last_decision if self.autoscaler is not None else None

    def switch_to(
        self, node: DeploymentNode, isolation: Isolation, fingerprint: str, now: float
    ) -> DeploymentNode:
        """Adopt `node`'s code and options (limits, target, autoscaler); returns the node before."""
        previous = self.node
        config = node.deployment.config
        self.node, self.isolation, self.fingerprint = node, isolation, fingerprint
        self._idempotent.clear()
        self.replicas.configure(config.max_ongoing_requests, config.max_queued_requests)
        if config.autoscaling is None:
            self.target, self.autoscaler = config.num_replicas, None
        elif self.autoscaler is None or self.autoscaler.config != config.autoscaling:
            self.autoscaler = Autoscaler(
                config.autoscaling, now, max_ongoing_requests=config.max_ongoing_requests
            )
            self.target = max(
                config.autoscaling.min_replicas, min(self.target, config.autoscaling.max_replicas)
            )
        return previous

    def backoff_s(self) -> float:
        """How long to wait before the next start after `start_failures` failures in a row."""
        if not self.start_failures:
            return 0.0
        return RESTART_BACKOFF_S[min(self.start_failures, len(RESTART_BACKOFF_S)) - 1]

    def idempotent(self, method: str) -> bool:
        """Whether `method` is marked safe to retry on another replica."""
        known = self._idempotent.get(method)
        if known is None:
            deployment = self.node.deployment
            try:
                func = user_method(deployment.target, deployment.is_function, method)
            except Exception:
                return False
            known = self._idempotent[method] = is_idempotent(func)
        return known

    def status(self) -> dict[str, Any]:
        """JSON-ready view for `/-/status`."""
        config = self.node.deployment.config
        decision = self.last_decision
        return {
            "version": config.version,
            "isolation": self.isolation,
            "target_replicas": self.target,
            "running_replicas": self.running,
            "starting_replicas": self.starting,
            "restarts": self.restarts,
            "health_check_failures": self.health_check_failures,
            "scaling_decisions": dict(self.scaled),
            "last_error": self.last_error,
            "autoscaling": None
            if decision is None
            else {
                "desired": decision.desired,
                "reason": decision.reason,
                "at": decision.at,
            },
            **self.replicas.status(),
        }
