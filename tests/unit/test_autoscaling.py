"""Autoscaling decisions, pinned by simulation: a fake clock, a load curve, replicas out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

import servekit as sk
from servekit._replica.autoscaling import (
    Autoscaler,
    MetricsSample,
    PolicyInput,
    ScalingDecision,
    resolve_policy,
)
from servekit.errors import DeploymentOptionError

Load = Callable[[float], int]


def simulate(
    config: sk.Autoscaling,
    load: Load,
    until: float,
    *,
    capacity: int = 4,
    service_ms: float | None = None,
    max_ongoing_requests: int | None = None,
) -> list[ScalingDecision]:
    """Feed one sample every `metrics_interval_s` from t=0 to `until`; return every decision.

    `load(t)` is the number of requests in the deployment at t. Each replica runs up to
    `capacity` of them and the rest queue. With `service_ms`, requests complete with that
    latency, stretched by how far the load exceeds capacity. A decided replica count runs
    from the next sample on (replicas start instantly).
    """
    scaler = Autoscaler(config, 0.0, max_ongoing_requests=max_ongoing_requests)
    replicas = config.start_replicas
    decisions = []
    for tick in range(round(until / config.metrics_interval_s) + 1):
        now = tick * config.metrics_interval_s
        requests = load(now)
        ongoing = min(requests, replicas * capacity)
        latencies: tuple[float, ...] = ()
        if service_ms is not None and ongoing:
            latencies = (service_ms * max(1.0, requests / (replicas * capacity)),) * ongoing
        scaler.observe(MetricsSample(now, replicas, ongoing, requests - ongoing, latencies))
        decision = scaler.decide(now, replicas)
        decisions.append(decision)
        replicas = decision.desired
    return decisions


def step(level: int, start: float, stop: float = float("inf")) -> Load:
    """`level` requests from `start` until `stop`, none otherwise."""
    return lambda t: level if start <= t < stop else 0


def changes(decisions: list[ScalingDecision]) -> list[tuple[float, int, int]]:
    """(time, from, to) for each decision that changed the replica count."""
    return [(d.at, d.current, d.desired) for d in decisions if d.desired != d.current]


def fast(**options: Any) -> sk.Autoscaling:
    """Options with short delays and a 2 s window, so trajectories are easy to read."""
    defaults: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 3,
        "downscale_delay_s": 5,
        "look_back_period_s": 2,
    }
    return sk.Autoscaling(**{**defaults, **options})


def decide_once(config: sk.Autoscaling, current: int, *samples: MetricsSample) -> ScalingDecision:
    scaler = Autoscaler(config, 0.0)
    for sample in samples:
        scaler.observe(sample)
    return scaler.decide(samples[-1].at if samples else 0.0, current)


# --- policies referenced by "module:function" ---------------------------------------------


def double_policy(inputs: PolicyInput) -> int:
    return max(inputs.current_replicas * 2, 1)


def failing_policy(inputs: PolicyInput) -> int:
    raise RuntimeError("model store down")


class Policies:
    @staticmethod
    def three(inputs: PolicyInput) -> int:
        return 3


NOT_CALLABLE = 42


# --- ongoing_requests ------------------------------------------------------------------------


def test_step_load_scales_up_after_upscale_delay_and_down_after_downscale_delay() -> None:
    decisions = simulate(fast(), step(12, start=10, stop=30), until=45)

    # 12 requests / 2 per replica = 6; the window (2 s) sees the step at t=10 and t=11, the
    # upscale waits 3 s, the downscale 5 s after the load stops at t=30.
    assert changes(decisions) == [(13.0, 1, 6), (35.0, 6, 1)]


def test_delays_are_measured_in_seconds_whatever_the_metrics_interval() -> None:
    decisions = simulate(fast(metrics_interval_s=0.5), step(12, start=10, stop=30), until=45)

    assert changes(decisions) == [(13.0, 1, 6), (35.0, 6, 1)]


def test_ongoing_requests_counts_queued_requests_too() -> None:
    sample = MetricsSample(at=0.0, running_replicas=2, ongoing_requests=4, queued_requests=8)

    decision = decide_once(fast(upscale_delay_s=0), 2, sample)

    assert decision.desired == 6  # (4 + 8) / 2 per replica


def test_a_spike_shorter_than_the_upscale_delay_changes_nothing() -> None:
    decisions = simulate(fast(), step(12, start=10, stop=11.5), until=30)

    assert changes(decisions) == []
    assert "upscale to" in decisions[11].reason
    assert "keeping 1" in decisions[14].reason


def test_a_change_of_direction_restarts_the_wait() -> None:
    script = {0: 4, 1: 4, 2: 4, 3: 1, 4: 4, 5: 4, 6: 4, 7: 4}
    config = fast(max_replicas=4, policy=lambda inputs: script[int(inputs.now)], downscale_delay_s=60)
    scaler = Autoscaler(config, 0.0)
    current, trajectory = 2, []
    for now in map(float, script):
        scaler.observe(MetricsSample(now, current, 1, 0))
        current = scaler.decide(now, current).desired
        trajectory.append(current)

    # Up for 3 ticks (not yet 3 s held), down once, then up again: the 3 s count from t=4.
    assert trajectory == [2, 2, 2, 2, 2, 2, 2, 4]


def test_smoothing_damps_each_upscale_step() -> None:
    undamped = simulate(fast(upscale_delay_s=0, look_back_period_s=1), step(16, 0), until=5)
    damped = simulate(
        fast(upscale_delay_s=0, look_back_period_s=1, smoothing_factor=0.5), step(16, 0), until=5
    )

    assert changes(undamped) == [(0.0, 1, 8)]
    assert changes(damped) == [(0.0, 1, 5), (1.0, 5, 7), (2.0, 7, 8)]
    assert "smoothed by 0.5 from 1" in damped[0].reason


def test_smoothing_damps_downscale_steps_without_stalling() -> None:
    config = fast(initial_replicas=8, downscale_delay_s=0, look_back_period_s=1, smoothing_factor=0.5)

    decisions = simulate(config, lambda t: 16 if t < 1 else 2, until=8)

    # Half the gap each step (rounded up); the last step from 2 to 1 would stall at 2, so it
    # takes one replica instead.
    assert changes(decisions) == [(1.0, 8, 5), (2.0, 5, 3), (3.0, 3, 2), (4.0, 2, 1)]


def test_replicas_stay_within_min_and_max() -> None:
    config = fast(min_replicas=2, max_replicas=5, initial_replicas=3, upscale_delay_s=0, downscale_delay_s=0)

    decisions = simulate(config, step(1000, start=1, stop=5), until=10)

    assert changes(decisions) == [(0.0, 3, 2), (1.0, 2, 5), (6.0, 5, 2)]
    assert "capped at max_replicas 5" in decisions[1].reason
    assert "raised to min_replicas 2" in decisions[8].reason


def test_a_count_outside_the_bounds_is_corrected_at_once() -> None:
    config = fast(max_replicas=5, downscale_delay_s=600)

    decision = decide_once(config, 12, MetricsSample(0.0, 12, 40, 0))

    assert decision.desired == 5
    assert "outside" in decision.reason


def test_no_metrics_in_the_window_keeps_the_current_count() -> None:
    scaler = Autoscaler(fast(downscale_delay_s=0), 0.0)
    scaler.observe(MetricsSample(0.0, 3, 0, 0))

    decision = scaler.decide(10.0, 3)

    assert decision.desired == 3
    assert decision.reason == "no metrics in the last 2 s; keeping 3"


def test_samples_older_than_the_look_back_period_are_forgotten() -> None:
    scaler = Autoscaler(fast(look_back_period_s=3, upscale_delay_s=0), 0.0)
    for now, requests in [(0.0, 100), (1.0, 100), (2.0, 4), (3.0, 4), (4.0, 4)]:
        scaler.observe(MetricsSample(now, 2, requests, 0))

    assert scaler.decide(4.0, 2).desired == 2  # only t=2..4 count: 4 requests / 2 per replica


# --- scale to zero and from zero ---------------------------------------------------------------


def test_scale_to_zero_waits_for_downscale_delay_and_idle_time() -> None:
    config = fast(min_replicas=0, max_replicas=4, initial_replicas=3, downscale_to_zero_delay_s=20)

    decisions = simulate(config, step(6, start=0, stop=10), until=40)

    # Down to one after downscale_delay_s (5 s); zero once idle for 20 s (since t=10).
    assert changes(decisions) == [(15.0, 3, 1), (30.0, 1, 0)]
    assert "0 waits: idle 5 of 20 s (downscale_to_zero_delay_s)" in decisions[15].reason
    assert "scaling down 1 -> 0" in decisions[30].reason


def test_scale_to_zero_without_a_to_zero_delay_follows_downscale_delay() -> None:
    config = fast(min_replicas=0, max_replicas=4, initial_replicas=3)

    decisions = simulate(config, step(6, start=0, stop=10), until=20)

    assert changes(decisions) == [(15.0, 3, 0)]


def test_requests_at_zero_replicas_start_a_replica_without_upscale_delay() -> None:
    config = fast(min_replicas=0, initial_replicas=0, upscale_delay_s=30)

    decisions = simulate(config, step(1, start=5), until=6)

    assert changes(decisions) == [(5.0, 0, 1)]
    assert "1 request waiting at zero replicas: starting 1 now" in decisions[5].reason


def test_a_burst_at_zero_replicas_starts_the_proposed_count_at_once() -> None:
    config = fast(min_replicas=0, max_replicas=4, initial_replicas=0, upscale_delay_s=30)

    decisions = simulate(config, step(40, start=5), until=5)

    assert changes(decisions) == [(5.0, 0, 4)]


def test_never_scales_to_zero_while_requests_are_in_flight() -> None:
    config = fast(min_replicas=0, initial_replicas=2, downscale_delay_s=0, policy=lambda inputs: 0)

    decisions = simulate(config, step(3, start=0), until=5)

    assert changes(decisions) == [(0.0, 2, 1)]
    assert "0 waits: 3 requests in flight" in decisions[-1].reason


# --- queue_depth -------------------------------------------------------------------------------


def test_queue_depth_keeps_queued_requests_per_replica_under_target() -> None:
    config = fast(policy="queue_depth", target_queue_depth=4)

    decisions = simulate(config, step(40, start=10, stop=30), until=40, capacity=4, max_ongoing_requests=4)

    # 5 replicas run 20 and queue 20: 4 waiting per replica, the target.
    assert changes(decisions) == [(13.0, 1, 5), (35.0, 5, 1)]
    reason = decisions[13].reason
    assert "4 running per replica (max_ongoing_requests) + target 4 queued per replica" in reason


def test_queue_depth_learns_replica_capacity_from_a_queue() -> None:
    config = fast(policy="queue_depth", target_queue_depth=4)

    decisions = simulate(config, step(40, start=10, stop=30), until=40, capacity=4)

    assert changes(decisions) == [(13.0, 1, 5), (35.0, 5, 1)]
    assert "(busiest seen)" in decisions[13].reason


def test_queue_depth_keeps_enough_replicas_for_ongoing_work() -> None:
    config = fast(policy="queue_depth", target_queue_depth=100, initial_replicas=3, downscale_delay_s=0)
    scaler = Autoscaler(config, 0.0, max_ongoing_requests=4)
    scaler.observe(MetricsSample(0.0, 3, 12, 0))

    assert scaler.decide(0.0, 3).desired == 3


def test_queue_depth_packs_light_load_onto_fewer_replicas() -> None:
    config = fast(policy="queue_depth", initial_replicas=4, downscale_delay_s=0)
    scaler = Autoscaler(config, 0.0, max_ongoing_requests=4)
    scaler.observe(MetricsSample(0.0, 4, 6, 0))

    assert scaler.decide(0.0, 4).desired == 2


# --- latency -----------------------------------------------------------------------------------


def test_latency_scales_up_in_bounded_steps_and_idles_down() -> None:
    config = fast(
        policy="latency",
        target_latency_ms=100,
        max_replicas=8,
        upscale_delay_s=2,
        downscale_delay_s=4,
        look_back_period_s=1,
    )

    decisions = simulate(config, step(35, start=0, stop=20), until=30, capacity=2, service_ms=20)

    # 35 requests on 1 replica: p95 350 ms -> at most x2 -> 2; on 2: 175 ms -> x1.75 -> 4;
    # on 4: 87.5 ms is within target. Idle from t=20.
    assert changes(decisions) == [(2.0, 1, 2), (5.0, 2, 4), (24.0, 4, 1)]
    assert "p95 350 ms over 1 s vs target 100 ms: x2" in decisions[0].reason
    assert "within target" in decisions[10].reason
    assert "no requests over 1 s (idle)" in decisions[24].reason


def test_latency_well_under_target_sheds_one_replica_at_a_time() -> None:
    config = fast(policy="latency", target_latency_ms=100, initial_replicas=4, look_back_period_s=1)

    decisions = simulate(config, step(4, start=0), until=20, capacity=2, service_ms=20)

    assert changes(decisions) == [(5.0, 4, 3), (11.0, 3, 2), (17.0, 2, 1)]
    assert "well under target, shedding one" in decisions[0].reason


def test_latency_does_not_shed_replicas_while_requests_queue() -> None:
    config = fast(policy="latency", target_latency_ms=100, initial_replicas=2, downscale_delay_s=0)
    sample = MetricsSample(0.0, 2, 4, 3, latencies_ms=(10.0,) * 20)

    decision = decide_once(config, 2, sample)

    assert decision.desired == 2
    assert "requests queued" in decision.reason


def test_latency_without_completed_requests_keeps_the_current_count() -> None:
    config = fast(policy="latency", target_latency_ms=100, initial_replicas=2, downscale_delay_s=0)

    decision = decide_once(config, 2, MetricsSample(0.0, 2, 8, 0))

    assert decision.desired == 2
    assert "no request completed over 2 s" in decision.reason


# --- user policies -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [double_policy, f"{__name__}:double_policy"])
def test_user_policy_by_callable_or_path_is_clamped_and_delayed(policy: Any) -> None:
    config = fast(max_replicas=5, upscale_delay_s=2, policy=policy)

    decisions = simulate(config, step(1, 0), until=10)

    assert changes(decisions) == [(2.0, 1, 2), (5.0, 2, 4), (8.0, 4, 5)]
    assert "double_policy' asked for 2 -> 2 replicas; upscale to 2 waits 2 s more" in decisions[0].reason


def test_user_policy_path_may_name_an_attribute_of_a_class() -> None:
    policy = resolve_policy(f"{__name__}:Policies.three")

    assert policy is Policies.three


def test_a_raising_user_policy_keeps_the_current_count_and_says_why() -> None:
    decision = decide_once(fast(policy=failing_policy), 3, MetricsSample(0.0, 3, 50, 0))

    assert decision.desired == 3
    assert decision.reason == "policy 'failing_policy' raised RuntimeError: model store down; keeping 3"


def test_a_raising_user_policy_still_cold_starts_from_zero() -> None:
    config = fast(min_replicas=0, initial_replicas=0, policy="builtins:len")

    decision = decide_once(config, 0, MetricsSample(0.0, 0, 0, 2))

    assert decision.desired == 1
    assert "policy 'builtins:len' raised TypeError" in decision.reason


def test_a_user_policy_returning_no_count_is_reported() -> None:
    decision = decide_once(fast(policy=lambda inputs: "three"), 2, MetricsSample(0.0, 2, 1, 0))

    assert decision.desired == 2
    assert "it returned 'three'; a policy returns a replica count" in decision.reason


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:policy", "'no_such_module_xyz:policy' cannot be imported: ModuleNotFoundError"),
        (f"{__name__}:missing_policy", "cannot be imported: AttributeError"),
        (f"{__name__}:NOT_CALLABLE", "is a int, not a function of PolicyInput"),
    ],
)
def test_a_bad_policy_path_is_an_error_naming_it(path: str, message: str) -> None:
    with pytest.raises(DeploymentOptionError, match=message):
        Autoscaler(fast(policy=path), 0.0)


def test_an_unknown_policy_name_is_an_error_listing_the_builtins() -> None:
    with pytest.raises(DeploymentOptionError, match="ongoing_requests, queue_depth, latency"):
        resolve_policy("fastest")


def test_a_policy_that_is_not_callable_is_an_error() -> None:
    with pytest.raises(DeploymentOptionError, match="policy 42 is not callable"):
        resolve_policy(cast(Any, 42))


def test_resolve_policy_turns_a_builtin_name_into_a_function() -> None:
    inputs = PolicyInput(fast(), 0.0, 1, [MetricsSample(0.0, 1, 5, 1)])

    assert resolve_policy("ongoing_requests")(inputs) == 3.0


# --- inputs and decisions ----------------------------------------------------------------------


def test_policy_input_summarises_the_window() -> None:
    samples = [
        MetricsSample(0.0, 2, 4, 0, latencies_ms=tuple(float(ms) for ms in range(1, 51))),
        MetricsSample(1.0, 2, 6, 2, latencies_ms=tuple(float(ms) for ms in range(51, 101))),
    ]
    inputs = PolicyInput(fast(), 1.0, 2, samples)

    assert inputs.average_ongoing_requests == 5
    assert inputs.average_queued_requests == 1
    assert inputs.latency_percentile(95) == 95
    assert inputs.latency_percentile(100) == 100
    assert PolicyInput(fast(), 0.0, 1, samples[:0]).latency_percentile(95) is None


def test_reasons_say_what_was_measured_and_what_waits() -> None:
    decisions = simulate(fast(), step(12, start=10, stop=30), until=35)

    assert decisions[11].reason == (
        "avg 12 ongoing+queued requests over 2 s / target 2 per replica -> 6 replicas; "
        "upscale to 6 waits 2 s more (1 of 3 s)"
    )
    assert decisions[13].reason == (
        "avg 12 ongoing+queued requests over 2 s / target 2 per replica -> 6 replicas; "
        "scaling up 1 -> 6 (upscale held 3 s)"
    )
    assert decisions[13].to_dict() == {
        "at": 13.0,
        "current": 1,
        "desired": 6,
        "proposal": 6,
        "reason": decisions[13].reason,
    }


def test_last_decision_is_the_latest_one() -> None:
    scaler = Autoscaler(fast(), 0.0)
    assert scaler.last_decision is None
    scaler.observe(MetricsSample(0.0, 1, 0, 0))

    decision = scaler.decide(0.0, 1)

    assert scaler.last_decision is decision


def test_the_same_inputs_give_the_same_decisions() -> None:
    run = lambda: simulate(fast(smoothing_factor=0.7), step(23, 3, 17), until=40)  # noqa: E731

    assert run() == run()
