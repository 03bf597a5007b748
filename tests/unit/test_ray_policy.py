"""servekit's autoscaling policies inside Ray's controller, fed Ray's `AutoscalingContext` (faked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import servekit as sk
from servekit._replica.autoscaling import PolicyInput
from servekit._runtime.ray.autoscaling import P95_LATENCY_METRIC, ServekitPolicy, worst_p95
from servekit._runtime.ray.options import encode_policy


@dataclass
class Context:
    """The attributes of Ray's `AutoscalingContext` the adapter reads."""

    current_num_replicas: int
    total_num_requests: float
    total_queued_requests: float = 0.0
    aggregated_metrics: dict[str, dict[Any, float]] = field(default_factory=dict)
    current_time: float | None = 100.0


def policy(autoscaling: sk.Autoscaling, max_ongoing_requests: int = 4) -> ServekitPolicy:
    return ServekitPolicy(encode_policy(autoscaling, max_ongoing_requests))


def test_queue_depth_counts_ongoing_and_queued_from_rays_totals() -> None:
    adapter = policy(sk.Autoscaling(max_replicas=10, policy="queue_depth", target_queue_depth=2), 4)
    replicas, state = adapter(
        Context(current_num_replicas=1, total_num_requests=24, total_queued_requests=16)
    )
    # 8 ongoing + 16 queued over (4 running + 2 queued) per replica = 4 replicas
    assert replicas == 4.0
    assert state == {}


def test_latency_scales_on_the_worst_replica_p95() -> None:
    adapter = policy(sk.Autoscaling(max_replicas=10, policy="latency", target_latency_ms=100))
    metrics = {P95_LATENCY_METRIC: {"replica-a": 80.0, "replica-b": 150.0}}
    replicas, _ = adapter(Context(current_num_replicas=2, total_num_requests=6, aggregated_metrics=metrics))
    assert replicas == 3.0  # p95 150 ms / 100 ms target: x1.5


def test_latency_without_requests_asks_for_zero() -> None:
    adapter = policy(sk.Autoscaling(min_replicas=0, max_replicas=3, policy="latency", target_latency_ms=100))
    assert adapter(Context(current_num_replicas=1, total_num_requests=0))[0] == 0.0


def test_a_users_policy_sees_rays_metrics_as_a_policy_input() -> None:
    def mine(
        inputs: PolicyInput,
    ) -> float:  # travels pickled, as to Ray's controller: answers say what it saw
        assert (inputs.current_replicas, inputs.max_ongoing_requests, inputs.now) == (2, 6, 100.0)
        return inputs.average_ongoing_requests * 10 + inputs.average_queued_requests

    adapter = policy(sk.Autoscaling(max_replicas=9, policy=mine), 6)
    assert adapter(Context(current_num_replicas=2, total_num_requests=5, total_queued_requests=2))[0] == 32.0


def test_a_failing_policy_keeps_the_current_count() -> None:
    def broken(inputs: PolicyInput) -> float:
        raise RuntimeError("no metrics store")

    adapter = policy(sk.Autoscaling(max_replicas=3, policy=broken))
    assert adapter(Context(current_num_replicas=2, total_num_requests=9))[0] == 2.0


def test_worst_p95_ignores_missing_and_empty_metrics() -> None:
    assert worst_p95(None) is None
    assert worst_p95({}) is None
    assert worst_p95({P95_LATENCY_METRIC: {}}) is None
    assert worst_p95({P95_LATENCY_METRIC: {"a": 0.0, "b": 12.5}}) == 12.5
