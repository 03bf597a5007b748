"""`ServekitPolicy`: servekit's autoscaling policies as a Ray Serve custom policy.

Ray's controller builds one `ServekitPolicy` per deployment (from the policy kwargs
`options.autoscaling_config` writes) and calls it with an `AutoscalingContext` every
decision. The adapter turns Ray's metrics into the `PolicyInput` servekit's policies read and
returns the policy's raw proposal: Ray applies the smoothing factors, the replica bounds and
the up/down/to-zero delays around it, as servekit's own controller does locally.

Ray's metrics are aggregates over `look_back_period_s`: ongoing and queued requests (queued
at the callers), and, for the 'latency' policy, the worst p95 latency any replica reported
through `record_autoscaling_stats` (each replica's p95 over its own look-back window).

Nothing here imports Ray: the context is read by attribute, so tests pass a plain object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from servekit._replica.autoscaling import MetricsSample, PolicyInput, resolve_policy
from servekit._runtime.ray.options import decode_policy

logger = logging.getLogger("servekit.autoscaling")

P95_LATENCY_METRIC = "servekit_p95_latency_ms"
"""The custom metric each replica reports (the p95 of its requests over the look-back window)."""


class ServekitPolicy:
    """A Ray custom autoscaling policy that runs a servekit policy ('queue_depth', 'latency', yours)."""

    def __init__(self, spec: str) -> None:
        self._config, self._max_ongoing_requests = decode_policy(spec)
        self._policy = resolve_policy(self._config.policy)

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """The replica count the policy proposes for Ray's `AutoscalingContext` `ctx`, and no state."""
        now = ctx.current_time if ctx.current_time is not None else time.time()
        total = float(ctx.total_num_requests or 0.0)
        queued = min(float(ctx.total_queued_requests or 0.0), total)
        p95 = worst_p95(ctx.aggregated_metrics)
        sample = MetricsSample(
            at=now,
            running_replicas=int(ctx.current_num_replicas),
            ongoing_requests=round(total - queued),
            queued_requests=round(queued),
            latencies_ms=() if p95 is None else (p95,),
        )
        inputs = PolicyInput(
            config=self._config,
            now=now,
            current_replicas=int(ctx.current_num_replicas),
            samples=(sample,),
            max_ongoing_requests=self._max_ongoing_requests,
        )
        try:
            return float(self._policy(inputs)), {}
        except Exception:  # a failing user policy must not stop Ray's controller
            policy, replicas = self._config.policy, sample.running_replicas
            logger.exception("autoscaling policy %r failed; keeping %s replicas", policy, replicas)
            return float(ctx.current_num_replicas), {}


def worst_p95(aggregated: Mapping[str, Mapping[Any, float]] | None) -> float | None:
    """The highest p95 latency any replica reported, or None when none did."""
    if not aggregated:
        return None
    values = [value for value in aggregated.get(P95_LATENCY_METRIC, {}).values() if value > 0]
    return max(values) if values else None
