"""`Evidence`: what one router saw, bounded: recent `ArmSample`s, per-arm counters and outcomes.

In: `record(sample)` for each finished call through an arm (primary or shadow), and outcomes
posted against request ids. Out: windows of samples for rollout analysis (`samples(since=...)`),
per-arm counters and latency percentiles for status, per-arm outcome values for A/B reports
(shadow comparisons: `analysis.ShadowComparison` over `samples()`). Memory is flat at any request rate: every
collection here has a fixed bound. Nothing here reads a clock: samples carry their time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.routing.samples import ArmSample

SAMPLE_CAPACITY = 20_000
"""Samples kept per router (the newest), across arms."""
LATENCY_CAPACITY = 2048
"""Latencies kept per arm for its percentiles."""
ASSIGNMENT_CAPACITY = 100_000
"""Request ids remembered with their arm, so outcomes posted later find it."""
OUTCOME_CAPACITY = 10_000
"""Values kept per arm and outcome name (counts and sums cover all of them)."""


@dataclass
class ArmStats:
    """Counters of one arm: calls, errors and recent latencies."""

    calls: int = 0
    errors: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_CAPACITY))

    def add(self, sample: ArmSample) -> None:
        """Count `sample`."""
        self.calls += 1
        if not sample.ok:
            self.errors += 1
        self.latencies_s.append(sample.latency_s)

    def view(self) -> dict[str, Any]:
        """JSON-ready counters: calls, errors, error rate and p50/p95/p99 latency in ms."""
        ordered = sorted(self.latencies_s)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.errors / self.calls if self.calls else 0.0,
            "p50_ms": _percentile_ms(ordered, 0.50),
            "p95_ms": _percentile_ms(ordered, 0.95),
            "p99_ms": _percentile_ms(ordered, 0.99),
        }


@dataclass
class OutcomeValues:
    """The values of one outcome on one arm: all counted, the newest kept."""

    count: int = 0
    total: float = 0.0
    values: deque[float] = field(default_factory=lambda: deque(maxlen=OUTCOME_CAPACITY))
    mean: float = 0.0
    m2: float = 0.0
    """Sum of squared deviations from the mean, over every value (Welford's method)."""

    def add(self, value: float) -> None:
        """Count `value`."""
        self.count += 1
        self.total += value
        self.values.append(value)
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)


_Row = tuple[str, bool, float, float, object, "str | None", bool]
"""An `ArmSample`'s fields, as kept: a tuple is cheap to make on every call; samples are made on read."""


class Evidence:
    """A router's bounded record of calls and outcomes, per arm."""

    def __init__(self, capacity: int = SAMPLE_CAPACITY) -> None:
        self._samples: deque[_Row] = deque(maxlen=capacity)
        self._stats: dict[str, ArmStats] = {}
        self._shadow_stats: dict[str, ArmStats] = {}
        self._assignments: dict[str, str] = {}
        self._outcomes: dict[str, dict[str, OutcomeValues]] = {}
        self.unmatched_outcomes = 0
        """Outcomes posted for request ids this router never saw (or forgot)."""

    def record(self, sample: ArmSample) -> None:
        """Keep `sample` and count it on its arm; remember a primary call's arm by request id."""
        self.record_call(
            sample.arm,
            sample.ok,
            sample.latency_s,
            sample.at,
            sample.output,
            sample.request_id,
            sample.shadow,
        )

    def record_call(  # noqa: PLR0917 (the fields of one ArmSample, on the per-call path)
        self,
        arm: str,
        ok: bool,
        latency_s: float,
        at: float,
        output: object,
        request_id: str | None,
        shadow: bool,
    ) -> None:
        """`record` for the router's per-call path: the sample's fields, no `ArmSample` made yet."""
        self._samples.append((arm, ok, latency_s, at, output, request_id, shadow))
        stats = self._shadow_stats if shadow else self._stats
        arm_stats = stats.get(arm)
        if arm_stats is None:
            arm_stats = stats[arm] = ArmStats()
        arm_stats.calls += 1
        if not ok:
            arm_stats.errors += 1
        arm_stats.latencies_s.append(latency_s)
        if not shadow and request_id is not None:
            assignments = self._assignments
            assignments[request_id] = arm
            if len(assignments) > ASSIGNMENT_CAPACITY:
                del assignments[next(iter(assignments))]

    def samples(
        self, since: float | None = None, arm: str | None = None, shadow: bool | None = None
    ) -> list[ArmSample]:
        """The kept samples, oldest first: ended at or after `since`, of `arm`, primary or shadow."""
        return [
            ArmSample(*row)
            for row in self._samples
            if (since is None or row[3] >= since)
            and (arm is None or row[0] == arm)
            and (shadow is None or row[6] == shadow)
        ]

    def arm_of(self, request_id: str) -> str | None:
        """The arm that served `request_id`, if remembered."""
        return self._assignments.get(request_id)

    def record_outcome(self, request_id: str, name: str, value: float) -> str | None:
        """Credit outcome `name` = `value` to the arm that served `request_id`; returns it (None: unknown)."""
        arm = self._assignments.get(request_id)
        if arm is None:
            self.unmatched_outcomes += 1
            return None
        by_name = self._outcomes.setdefault(arm, {})
        values = by_name.get(name)
        if values is None:
            values = by_name[name] = OutcomeValues()
        values.add(value)
        return arm

    def outcome_values(self, arm: str, name: str) -> list[float]:
        """The kept values of outcome `name` on `arm` (for A/B statistics)."""
        values = self._outcomes.get(arm, {}).get(name)
        return list(values.values) if values is not None else []

    def outcome_names(self) -> list[str]:
        """Every outcome name recorded on some arm."""
        return sorted({name for by_name in self._outcomes.values() for name in by_name})

    def arm_stats(self, arm: str) -> ArmStats:
        """The counters of primary arm `arm` (empty when it took no call)."""
        return self._stats.get(arm) or ArmStats()

    def outcomes_of(self, arm: str) -> dict[str, OutcomeValues]:
        """The outcomes credited to `arm`, by name."""
        return dict(self._outcomes.get(arm, {}))

    def arm_view(self, arm: str, shadow: bool = False) -> dict[str, Any]:
        """JSON-ready counters of `arm`, with its outcomes' counts and means."""
        stats = (self._shadow_stats if shadow else self._stats).get(arm) or ArmStats()
        view = stats.view()
        outcomes = self._outcomes.get(arm, {})
        view["outcomes"] = {
            name: {"count": values.count, "mean": values.total / values.count if values.count else None}
            for name, values in sorted(outcomes.items())
        }
        return view


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return 1000 * ordered[min(len(ordered), math.ceil(q * len(ordered))) - 1]


def merge_views(views: list[dict[str, Any]]) -> dict[str, Any]:
    """One router's status views from several processes as one: counts summed, percentiles the
    worst any process saw, outcome means weighted by count, shadow comparisons from the process
    with the most pairs. The first view gives everything else (weights, mode, options)."""
    if not views:
        return {}
    merged = dict(views[0])
    for section in ("arms", "shadows"):
        names = {arm for view in views for arm in view.get(section, {})}
        merged[section] = {
            arm: _merge_arm([view[section][arm] for view in views if arm in view.get(section, {})])
            for arm in sorted(names)
        }
    for counter in ("shadow_drops", "shadows_in_flight", "unavailable_redirects", "unmatched_outcomes"):
        merged[counter] = sum(view.get(counter, 0) for view in views)
    comparisons: dict[str, Any] = {}
    for view in views:
        for arm, compared in view.get("shadow_comparison", {}).items():
            if compared["pairs"] > comparisons.get(arm, {}).get("pairs", -1):
                comparisons[arm] = compared
    merged["shadow_comparison"] = comparisons
    merged["notes"] = sorted({note for view in views for note in view.get("notes", [])})
    merged["processes"] = len(views)
    return merged


def _merge_arm(views: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(views[0])
    merged["calls"] = sum(view["calls"] for view in views)
    merged["errors"] = sum(view["errors"] for view in views)
    merged["error_rate"] = merged["errors"] / merged["calls"] if merged["calls"] else 0.0
    merged["available"] = all(view.get("available", True) for view in views)
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        found = [view[key] for view in views if view.get(key) is not None]
        merged[key] = max(found) if found else None
    outcomes: dict[str, dict[str, Any]] = {}
    for view in views:
        for name, summary in view.get("outcomes", {}).items():
            into = outcomes.setdefault(name, {"count": 0, "total": 0.0})
            into["count"] += summary["count"]
            into["total"] += (summary["mean"] or 0.0) * summary["count"]
    merged["outcomes"] = {
        name: {"count": into["count"], "mean": into["total"] / into["count"] if into["count"] else None}
        for name, into in sorted(outcomes.items())
    }
    return merged
