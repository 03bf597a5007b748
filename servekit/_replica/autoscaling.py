"""Autoscaling decisions: metrics samples and a clock in, a desired replica count out.

The runtime's controller calls `Autoscaler.observe` with one `MetricsSample` per deployment
every `metrics_interval_s`, then `Autoscaler.decide`. A decision takes four steps:

1. policy: proposes a (fractional) replica count from the samples of the last
   `look_back_period_s` ('ongoing_requests', 'queue_depth', 'latency' or the user's own);
2. smoothing: moves from the current count towards that proposal by `smoothing_factor` of
   the gap, rounded up;
3. bounds: clamps to `[min_replicas, max_replicas]`;
4. delays: adopts a higher count once the proposal has stayed above the current one for
   `upscale_delay_s`, a lower one once it stayed below for `downscale_delay_s`; reaching zero
   also needs no request in flight and, when `downscale_to_zero_delay_s` is set, that long
   without any request. A proposal that changes direction restarts the wait.

Requests waiting at zero replicas skip the delays: the cold start begins at once. Nothing
here reads a clock, sleeps or draws random numbers, so a simulation with a fake clock
reproduces a run exactly.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from servekit._spec.config import Autoscaling
from servekit.errors import DeploymentOptionError

LATENCY_MAX_STEP = 2.0
"""The 'latency' policy at most doubles the replicas in one step."""
LATENCY_IDLE_FRACTION = 0.5
"""The 'latency' policy sheds a replica while p95 stays below this share of the target."""
_ROUNDING_SLACK = 1e-9

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class MetricsSample:
    """One observation of a deployment, taken by the controller."""

    at: float
    """Clock time in seconds (monotonic, the same clock `decide` gets)."""
    running_replicas: int
    ongoing_requests: int
    """Requests executing on replicas, summed over replicas."""
    queued_requests: int
    """Requests waiting for a replica, including callers waiting on a cold start from zero."""
    latencies_ms: tuple[float, ...] = ()
    """Latencies of the requests completed since the previous sample."""

    @property
    def requests(self) -> int:
        """Requests in the deployment: ongoing plus queued."""
        return self.ongoing_requests + self.queued_requests


@dataclass(frozen=True)
class PolicyInput:
    """What a policy sees: the options, the clock, the current count and the recent samples."""

    config: Autoscaling
    now: float
    current_replicas: int
    samples: Sequence[MetricsSample]
    """Samples of the last `look_back_period_s`, oldest first; never empty."""
    max_ongoing_requests: int | None = None
    """Requests one replica runs at once, when the runtime knows it."""

    @property
    def average_ongoing_requests(self) -> float:
        """Mean of `ongoing_requests` over the samples."""
        return _mean(sample.ongoing_requests for sample in self.samples)

    @property
    def average_queued_requests(self) -> float:
        """Mean of `queued_requests` over the samples."""
        return _mean(sample.queued_requests for sample in self.samples)

    @property
    def latencies_ms(self) -> tuple[float, ...]:
        """Latencies of every request completed within the samples."""
        return tuple(latency for sample in self.samples for latency in sample.latencies_ms)

    def latency_percentile(self, percent: float) -> float | None:
        """The `percent`th percentile (nearest rank) of `latencies_ms`; None without latencies."""
        latencies = sorted(self.latencies_ms)
        if not latencies:
            return None
        rank = math.ceil(percent / 100 * len(latencies))
        return latencies[min(max(rank, 1), len(latencies)) - 1]


@dataclass(frozen=True)
class ScalingDecision:
    """The outcome of one `Autoscaler.decide` call."""

    at: float
    current: int
    desired: int
    """The replica count to run now (after bounds and delays)."""
    proposal: int
    """What the policy asked for after smoothing and bounds, before delays."""
    reason: str
    """A sentence saying why, e.g. for logs and `/-/status`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "at": self.at,
            "current": self.current,
            "desired": self.desired,
            "proposal": self.proposal,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _Proposal:
    replicas: float
    why: str


@dataclass(frozen=True)
class _Pending:
    direction: Direction
    since: float


_ExplainedPolicy = Callable[[PolicyInput], _Proposal]


class Autoscaler:
    """Turns one deployment's metrics into replica counts; see the module docstring for the steps.

    `max_ongoing_requests` (the deployment's per-replica limit) lets the 'queue_depth' policy
    pack work onto fewer replicas; without it that policy uses the busiest replica it saw.
    """

    def __init__(self, config: Autoscaling, now: float, *, max_ongoing_requests: int | None = None) -> None:
        self._config = config
        self._policy = _explained(config.policy)
        self._max_ongoing_requests = max_ongoing_requests
        self._samples: deque[MetricsSample] = deque()
        self._pending: _Pending | None = None
        self._idle_since: float | None = now
        self._last: ScalingDecision | None = None

    @property
    def config(self) -> Autoscaling:
        """The options this autoscaler follows."""
        return self._config

    @property
    def last_decision(self) -> ScalingDecision | None:
        """The most recent decision, or None before the first."""
        return self._last

    def observe(self, sample: MetricsSample) -> None:
        """Record one sample; the controller takes one every `metrics_interval_s`."""
        self._samples.append(sample)
        if sample.requests:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = sample.at
        self._forget_before(sample.at - self._config.look_back_period_s)

    def decide(self, now: float, current_replicas: int) -> ScalingDecision:
        """The replica count to run at `now`, given the `current_replicas` the deployment is scaled to."""
        self._forget_before(now - self._config.look_back_period_s)
        window = [sample for sample in self._samples if sample.at <= now]
        decision = self._decide(now, current_replicas, window)
        self._last = decision
        return decision

    def _decide(self, now: float, current: int, window: list[MetricsSample]) -> ScalingDecision:
        config = self._config
        bounded = _clamp(current, config)
        if bounded != current:
            self._pending = None
            reason = (
                f"the current count {current} lies outside min_replicas {config.min_replicas} .. "
                f"max_replicas {config.max_replicas}; scaling to {bounded} now"
            )
            return ScalingDecision(now, current, bounded, bounded, reason)
        if not window:
            self._pending = None
            reason = f"no metrics in the last {_num(config.look_back_period_s)} s; keeping {current}"
            return ScalingDecision(now, current, current, current, reason)
        inputs = PolicyInput(config, now, current, tuple(window), self._max_ongoing_requests)
        try:
            proposal = self._policy(inputs)
        except Exception as exc:  # a failing user policy must not stop the controller
            return self._policy_failed(now, current, window[-1], exc)
        target, adjusted = self._target(proposal.replicas, current)
        why = f"{proposal.why} -> {_count(target, 'replica')}{adjusted}"
        latest = window[-1]
        if current == 0 and latest.requests:
            self._pending = None
            desired = max(target, 1)
            waiting = _count(latest.requests, "request")
            reason = f"{why}; {waiting} waiting at zero replicas: starting {desired} now"
            return ScalingDecision(now, current, desired, target, reason)
        return self._delayed(now, current, target, why, latest)

    def _target(self, replicas: float, current: int) -> tuple[int, str]:
        """Smooth and clamp a policy's proposal; the second value says what changed it, if anything."""
        config = self._config
        smoothed = _smooth(replicas, current, config.smoothing_factor)
        target = _clamp(smoothed, config)
        if target > smoothed:
            return target, f" (raised to min_replicas {config.min_replicas})"
        if target < smoothed:
            return target, f" (capped at max_replicas {config.max_replicas})"
        if smoothed != _ceil(replicas):
            factor = _num(config.smoothing_factor)
            return target, f" ({_num(replicas)} smoothed by {factor} from {current})"
        return target, ""

    def _delayed(
        self, now: float, current: int, target: int, why: str, latest: MetricsSample
    ) -> ScalingDecision:
        if target == current:
            self._pending = None
            return ScalingDecision(now, current, current, target, f"{why}; keeping {current}")
        direction: Direction = "up" if target > current else "down"
        if self._pending is None or self._pending.direction != direction:
            self._pending = _Pending(direction, now)
        held = now - self._pending.since
        delay = self._config.upscale_delay_s if direction == "up" else self._config.downscale_delay_s
        if held < delay:
            waits = f"waits {_num(delay - held)} s more ({_num(held)} of {_num(delay)} s)"
            verdict = f"{direction}scale to {target} {waits}"
            return ScalingDecision(now, current, current, target, f"{why}; {verdict}")
        if target == 0:
            return self._toward_zero(now, current, why, latest, held)
        self._pending = None
        verdict = f"scaling {direction} {current} -> {target} ({direction}scale held {_num(held)} s)"
        return ScalingDecision(now, current, target, target, f"{why}; {verdict}")

    def _toward_zero(
        self, now: float, current: int, why: str, latest: MetricsSample, held: float
    ) -> ScalingDecision:
        """Go to zero if nothing is in flight and the to-zero idleness has passed; else to one."""
        blocker = self._zero_blocker(now, latest)
        if blocker is None:
            self._pending = None
            verdict = f"scaling down {current} -> 0 (downscale held {_num(held)} s, no requests)"
            return ScalingDecision(now, current, 0, 0, f"{why}; {verdict}")
        # The downscale wait stays satisfied: from one replica only the blocker remains.
        desired = min(current, 1)
        if desired < current:
            verdict = f"scaling down {current} -> 1 (downscale held {_num(held)} s); 0 waits: {blocker}"
        else:
            verdict = f"keeping 1; 0 waits: {blocker}"
        return ScalingDecision(now, current, desired, 0, f"{why}; {verdict}")

    def _zero_blocker(self, now: float, latest: MetricsSample) -> str | None:
        if latest.requests:
            return f"{_count(latest.requests, 'request')} in flight"
        zero_delay = self._config.downscale_to_zero_delay_s
        if zero_delay is None:
            return None
        idle = 0.0 if self._idle_since is None else now - self._idle_since
        if idle < zero_delay:
            return f"idle {_num(idle)} of {_num(zero_delay)} s (downscale_to_zero_delay_s)"
        return None

    def _policy_failed(
        self, now: float, current: int, latest: MetricsSample, exc: Exception
    ) -> ScalingDecision:
        self._pending = None
        failure = f"policy {_policy_name(self._config.policy)} raised {type(exc).__name__}: {exc}"
        if current == 0 and latest.requests:
            desired = max(self._config.min_replicas, 1)
            waiting = _count(latest.requests, "request")
            reason = f"{failure}; {waiting} waiting at zero replicas: starting {desired} now"
            return ScalingDecision(now, current, desired, desired, reason)
        return ScalingDecision(now, current, current, current, f"{failure}; keeping {current}")

    def _forget_before(self, horizon: float) -> None:
        while self._samples and self._samples[0].at <= horizon:
            self._samples.popleft()


def resolve_policy(policy: str | Callable[..., Any]) -> Callable[[PolicyInput], float]:
    """The policy function for a builtin name, a callable, or a 'module:function' path.

    A policy takes a `PolicyInput` and returns the replica count it wants (a float is rounded
    up). Raises `DeploymentOptionError` naming the policy when it cannot be imported or called.
    """
    if isinstance(policy, str) and policy in _BUILTIN:
        builtin = _BUILTIN[policy]
        return lambda inputs: builtin(inputs).replicas
    return _user_policy(policy)


def _explained(policy: str | Callable[..., Any]) -> _ExplainedPolicy:
    if isinstance(policy, str) and policy in _BUILTIN:
        return _BUILTIN[policy]
    function = _user_policy(policy)
    name = _policy_name(policy)

    def explained(inputs: PolicyInput) -> _Proposal:
        result: object = function(inputs)
        if not isinstance(result, numbers.Real) or not math.isfinite(result) or result < 0:
            raise TypeError(f"it returned {result!r}; a policy returns a replica count, a number >= 0")
        return _Proposal(float(result), f"policy {name} asked for {_num(float(result))}")

    return explained


def _user_policy(policy: str | Callable[..., Any]) -> Callable[[PolicyInput], float]:
    if not isinstance(policy, str):
        if not callable(policy):
            raise DeploymentOptionError(f"autoscaling policy {policy!r} is not callable")
        return policy
    module_name, _, attribute = policy.partition(":")
    if not module_name or not attribute:
        raise DeploymentOptionError(
            f"autoscaling policy {policy!r} is unknown; use one of {', '.join(_BUILTIN)}, "
            "a callable, or 'module:function' like 'my_app.scaling:policy'"
        )
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise DeploymentOptionError(
            f"autoscaling policy {policy!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(target):
        raise DeploymentOptionError(
            f"autoscaling policy {policy!r} is a {type(target).__name__}, not a function of PolicyInput"
        )
    return target


def _policy_name(policy: str | Callable[..., Any]) -> str:
    if isinstance(policy, str):
        return repr(policy)
    return repr(getattr(policy, "__qualname__", type(policy).__qualname__))


def _ongoing_requests(inputs: PolicyInput) -> _Proposal:
    """Ray Serve's policy: ongoing plus queued requests over `target_ongoing_requests` per replica."""
    config = inputs.config
    requests = inputs.average_ongoing_requests + inputs.average_queued_requests
    target = config.target_ongoing_requests
    why = (
        f"avg {_num(requests)} ongoing+queued requests over {_num(config.look_back_period_s)} s "
        f"/ target {_num(target)} per replica"
    )
    return _Proposal(requests / target, why)


def _queue_depth(inputs: PolicyInput) -> _Proposal:
    """Fewest replicas that hold the ongoing work and keep at most `target_queue_depth` waiting each."""
    config = inputs.config
    ongoing, queued = inputs.average_ongoing_requests, inputs.average_queued_requests
    capacity, source = _replica_capacity(inputs)
    depth = config.target_queue_depth
    replicas = max((ongoing + queued) / (capacity + depth), ongoing / capacity)
    why = (
        f"avg {_num(queued)} queued and {_num(ongoing)} ongoing requests over "
        f"{_num(config.look_back_period_s)} s, {_num(capacity)} running per replica ({source}) "
        f"+ target {_num(depth)} queued per replica"
    )
    return _Proposal(replicas, why)


def _replica_capacity(inputs: PolicyInput) -> tuple[float, str]:
    """Requests one replica runs at once: known, else the busiest replica seen, else the target."""
    if inputs.max_ongoing_requests is not None:
        return float(inputs.max_ongoing_requests), "max_ongoing_requests"
    observed = max(
        (s.ongoing_requests / s.running_replicas for s in inputs.samples if s.running_replicas),
        default=0.0,
    )
    if observed > 0:
        return observed, "busiest seen"
    return inputs.config.target_ongoing_requests, "target_ongoing_requests"


def _latency(inputs: PolicyInput) -> _Proposal:
    """Scale up in proportion to p95 over target (at most x2); shed one replica when well under it."""
    config = inputs.config
    target = config.target_latency_ms
    if target is None:
        raise ValueError("policy 'latency' needs target_latency_ms")
    window = f"over {_num(config.look_back_period_s)} s"
    current = inputs.current_replicas
    p95 = inputs.latency_percentile(95)
    if p95 is None:
        if not any(sample.requests for sample in inputs.samples):
            return _Proposal(0.0, f"no requests {window} (idle)")
        return _Proposal(float(current), f"no request completed {window}")
    measured = f"p95 {_num(p95)} ms {window} vs target {_num(target)} ms"
    ratio = p95 / target
    if ratio > 1:
        step = min(ratio, LATENCY_MAX_STEP)
        return _Proposal(max(current, 1) * step, f"{measured}: x{_num(step)}")
    if ratio >= LATENCY_IDLE_FRACTION:
        return _Proposal(float(current), f"{measured}: within target")
    if any(sample.queued_requests for sample in inputs.samples):
        return _Proposal(float(current), f"{measured}: well under target, but requests queued")
    return _Proposal(float(max(current - 1, 1)), f"{measured}: well under target, shedding one")


_BUILTIN: dict[str, _ExplainedPolicy] = {
    "ongoing_requests": _ongoing_requests,
    "queue_depth": _queue_depth,
    "latency": _latency,
}


def _smooth(replicas: float, current: int, factor: float) -> int:
    """Ray Serve's smoothing: move `factor` of the way from `current`, never stalling a downscale."""
    smoothed = max(_ceil(current + factor * (replicas - current)), 0)
    wanted = _ceil(replicas)
    if wanted < current <= smoothed:
        smoothed = current - 1
    if wanted > 0:
        smoothed = max(smoothed, 1)
    return smoothed


def _clamp(replicas: int, config: Autoscaling) -> int:
    return min(max(replicas, config.min_replicas), config.max_replicas)


def _ceil(value: float) -> int:
    """Round up, forgiving float noise (3.0000000001 replicas is 3)."""
    return math.ceil(value - _ROUNDING_SLACK)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _num(value: float) -> str:
    """A number for a sentence: at most two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
