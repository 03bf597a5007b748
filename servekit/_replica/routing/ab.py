"""A/B test reports: finished calls and user outcomes per arm in, means, intervals and tests out.

The router feeds `ABTest.observe` one `ArmSample` per call (calls, errors, latency percentiles)
and `ABTest.record` each outcome a request reported (`sk.record_outcome(name, value)` or a
client's later post against the request id). `ABTest.report()` gives, per arm and outcome, the
count, mean and 95% confidence interval (Student's t), and between every two arms Welch's
t-test and how many samples per arm would detect the observed difference at alpha 0.05 with
power 0.8. Outcomes are kept as running sums (Welford), so memory does not grow with traffic.
Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.routing.analysis import normal_ppf, percentile, student_t_cdf, student_t_ppf
from servekit._replica.routing.evidence import Evidence
from servekit._replica.routing.samples import ArmSample

ALPHA = 0.05
"""Significance level of the tests and of the sample-size estimate (two-sided)."""
POWER = 0.8
"""Chance the sample-size estimate gives of detecting the observed difference."""
LATENCY_WINDOW = 10_000
"""Latency percentiles cover each arm's latest calls, at most this many."""
NOT_COMPUTABLE = "not computable"
STATE_LATENCIES = 512
"""Latencies per arm an `ab_state` carries (the newest), for the merged percentiles."""


@dataclass
class _Running:
    """Count, mean and sum of squared deviations of a stream of numbers (Welford's method)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 with fewer than two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


@dataclass(frozen=True)
class OutcomeSummary:
    """One outcome of one arm: its count, mean and 95% confidence interval."""

    n: int
    mean: float
    std: float
    ci_low: float | None
    """None with fewer than two values (no spread to estimate)."""
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        interval = None if self.ci_low is None else [self.ci_low, self.ci_high]
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": interval}


@dataclass(frozen=True)
class Comparison:
    """One outcome between two arms: Welch's t-test and the samples needed to tell them apart."""

    outcome: str
    arm_a: str
    arm_b: str
    difference: float
    """Mean of `arm_b` minus mean of `arm_a`."""
    t: float | None
    df: float | None
    p_value: float | None
    """Two-sided; None when not computable (fewer than two values on an arm, or no spread)."""
    significant: bool
    samples_per_arm: int | None
    """Samples per arm that detect `difference` at ALPHA with POWER; None when not computable."""
    more_per_arm: int | None
    """How many more samples per arm that is, beyond the smaller arm's count."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view; 'not computable' where a figure cannot be had."""
        return {
            "outcome": self.outcome,
            "arms": [self.arm_a, self.arm_b],
            "difference": self.difference,
            "t": self.t,
            "df": self.df,
            "p_value": self.p_value if self.p_value is not None else NOT_COMPUTABLE,
            "significant": self.significant,
            "samples_per_arm": self.samples_per_arm if self.samples_per_arm is not None else NOT_COMPUTABLE,
            "more_samples_per_arm": self.more_per_arm if self.more_per_arm is not None else NOT_COMPUTABLE,
        }


@dataclass
class _ArmStats:
    calls: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    outcomes: dict[str, _Running] = field(default_factory=dict)


class ABTest:
    """Per-arm calls, errors, latency and outcomes of a split, with tests between arms."""

    def __init__(self, arms: list[str] | None = None) -> None:
        self._arms: dict[str, _ArmStats] = {arm: _ArmStats() for arm in arms or []}

    def observe(self, sample: ArmSample) -> None:
        """Record one finished call of a primary arm (shadow calls are not part of the test)."""
        if sample.shadow:
            return
        stats = self._arm(sample.arm)
        stats.calls += 1
        stats.errors += not sample.ok
        stats.latencies.append(sample.latency_s)

    def record(self, arm: str, name: str, value: float) -> None:
        """Record outcome `name` = `value` (a number; True/False count 1/0) for a request `arm` served."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"outcome {name!r} must be a finite number, got {value!r}")
        self._arm(arm).outcomes.setdefault(name, _Running()).add(number)

    def summary(self, arm: str, name: str) -> OutcomeSummary | None:
        """Outcome `name` of `arm`, or None when the arm has not recorded it."""
        stats = self._arms.get(arm)
        running = stats.outcomes.get(name) if stats else None
        return None if running is None else _summary(running)

    def compare(self, name: str, arm_a: str, arm_b: str) -> Comparison:
        """Outcome `name` of `arm_b` against `arm_a` (empty arms count as no data)."""
        empty = _Running()
        a = self._arms[arm_a].outcomes.get(name, empty) if arm_a in self._arms else empty
        b = self._arms[arm_b].outcomes.get(name, empty) if arm_b in self._arms else empty
        return _welch(name, arm_a, arm_b, a, b)

    def report(self) -> dict[str, Any]:
        """JSON-ready: per arm its calls, errors, latencies and outcomes; per outcome the comparisons."""
        arms = {arm: self._arm_report(arm, stats) for arm, stats in self._arms.items()}
        names = sorted({name for stats in self._arms.values() for name in stats.outcomes})
        comparisons = {
            name: [self.compare(name, a, b).to_dict() for a, b in itertools.combinations(self._arms, 2)]
            for name in names
        }
        return {"alpha": ALPHA, "power": POWER, "arms": arms, "comparisons": comparisons}

    def _arm_report(self, arm: str, stats: _ArmStats) -> dict[str, Any]:
        latencies = list(stats.latencies)
        return {
            "calls": stats.calls,
            "errors": stats.errors,
            "error_rate": stats.errors / stats.calls if stats.calls else None,
            "latency_s": {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
            "outcomes": {
                name: _summary(running).to_dict() for name, running in sorted(stats.outcomes.items())
            },
        }

    def _arm(self, arm: str) -> _ArmStats:
        return self._arms.setdefault(arm, _ArmStats())


def _summary(running: _Running) -> OutcomeSummary:
    std = math.sqrt(running.variance)
    if running.n < 2:
        return OutcomeSummary(running.n, running.mean, std, None, None)
    half = student_t_ppf(1 - ALPHA / 2, running.n - 1) * std / math.sqrt(running.n)
    return OutcomeSummary(running.n, running.mean, std, running.mean - half, running.mean + half)


def _welch(name: str, arm_a: str, arm_b: str, a: _Running, b: _Running) -> Comparison:
    difference = b.mean - a.mean
    needed = samples_per_arm(difference, a.variance, b.variance)
    more = None if needed is None else max(0, needed - min(a.n, b.n))
    se2_a = a.variance / a.n if a.n else 0.0
    se2_b = b.variance / b.n if b.n else 0.0
    if a.n < 2 or b.n < 2 or se2_a + se2_b == 0:
        return Comparison(name, arm_a, arm_b, difference, None, None, None, False, needed, more)
    t = difference / math.sqrt(se2_a + se2_b)
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / (a.n - 1) + se2_b**2 / (b.n - 1))
    p_value = 2.0 * (1.0 - student_t_cdf(abs(t), df))
    return Comparison(name, arm_a, arm_b, difference, t, df, p_value, p_value < ALPHA, needed, more)


def samples_per_arm(
    difference: float, variance_a: float, variance_b: float, alpha: float = ALPHA, power: float = POWER
) -> int | None:
    """Samples per arm for a two-sided test at `alpha` to detect `difference` with `power`.

    The normal approximation n = (z_{1-alpha/2} + z_power)^2 (var_a + var_b) / difference^2;
    None when the difference or both variances are zero (any or no sample size would do).
    """
    spread = variance_a + variance_b
    if difference == 0 or spread == 0:
        return None
    z = normal_ppf(1 - alpha / 2) + normal_ppf(power)
    return math.ceil(z * z * spread / (difference * difference))


def ab_state(evidence: Evidence, arms: list[str]) -> dict[str, Any]:
    """What one process's router knows for an A/B report, in a form reports can merge.

    Per arm: exact calls and errors, the newest `STATE_LATENCIES` latencies, and per outcome
    the count, mean and sum of squared deviations of all its values (kept as running sums).
    """
    state: dict[str, Any] = {}
    for arm in arms:
        stats = evidence.arm_stats(arm)
        outcomes = {
            name: [values.count, values.mean, values.m2] for name, values in evidence.outcomes_of(arm).items()
        }
        latencies = list(stats.latencies_s)[-STATE_LATENCIES:]
        state[arm] = {
            "calls": stats.calls,
            "errors": stats.errors,
            "latencies": latencies,
            "outcomes": outcomes,
        }
    return state


def ab_report(arms: list[str], states: list[dict[str, Any]]) -> dict[str, Any]:
    """`ABTest.report()` over the `ab_state`s of every process routing through a split."""
    test = ABTest(arms)
    for state in states:
        for arm, part in state.items():
            stats = test._arm(arm)
            stats.calls += part["calls"]
            stats.errors += part["errors"]
            stats.latencies.extend(part["latencies"])
            for name, (n, mean, m2) in part["outcomes"].items():
                into = stats.outcomes.setdefault(name, _Running())
                _merge_running(into, _Running(n, mean, m2))
    return test.report()


def _merge_running(into: _Running, other: _Running) -> None:
    """Fold `other` into `into` (Chan et al.'s parallel form of Welford's method)."""
    if other.n == 0:
        return
    total = into.n + other.n
    delta = other.mean - into.mean
    into.m2 += other.m2 + delta * delta * into.n * other.n / total
    into.mean += delta * other.n / total
    into.n = total
