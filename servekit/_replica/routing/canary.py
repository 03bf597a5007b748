"""The canary controller: `ArmSample`s and a clock in, traffic decisions out.

The router that owns a canary calls `observe` with every finished call of its arms and `tick`
about once a second; a `CanaryDecision` from `tick` (or from an operator's `promote_now` /
`abort`) carries the new weights to apply. Nothing here reads a clock, sleeps or does I/O, so
a simulation with a fake clock reproduces a run exactly.

## Decision rules

The candidate gets `steps[0]` percent of the traffic at the start. Each step has a window: the
calls of both arms that ended since the step began (shadow calls are ignored). Over that
window three checks compare candidate and baseline:

1. **Errors.** An always-valid sequential test (a normal-mixture SPRT on the difference of the
   error rates; see `analysis.error_rate_evidence`) of "the candidate's error rate exceeds the
   baseline's by more than `max_error_rate_increase`". It *fails* when the test rejects at
   `1 - confidence`, however few calls that took (peeking after every call is safe); it
   *passes* with `min_samples` calls on both arms and an observed increase within the tolerance;
   otherwise it *waits*.
2. **Latency.** With `min_samples` calls on both arms, the candidate's p95 (nearest rank, failed
   calls included, so timeouts count as slow) over the baseline's: above `max_p95_ratio` it
   *fails*, else it *passes*. Fewer calls: it *waits*.
3. **Output.** With `min_samples` declared outputs on both arms, the divergence of the
   candidate's outputs from the baseline's: Jensen-Shannon (or KL) divergence in bits of the
   label counts, or PSI over the baseline's deciles for numbers. Above `max_divergence` it
   *fails*, else it *passes*. Without `output` configured it is *skipped*.

After each `tick(now)`:

- any check *fails* -> **rollback**: 100% baseline at once, without waiting for `bake_s`
  (a conclusive failure needs no more data). Rollback also happens while paused.
- paused, or the step began less than `bake_s` ago -> no decision (`None`).
- every check *passes* (or is skipped) -> **promote** to the next step, whose window starts
  empty; promoting onto the last step (100) is **complete**: the candidate takes all traffic
  and the canary ends.
- otherwise -> **hold**: the weights stay, and the decision says which checks wait and why.

An operator may `pause` (no promotion until `resume`), `promote_now` (the next step, or 100%
with `full=True`, without checks) and `abort` (rollback). Every decision and operator action is
an event with its time, weights and every check's figures; a hold is recorded once per kind of
hold, not once per tick. A window keeps exact call, error and output counts and, beyond
`WINDOW_VALUES` per arm, an evenly spaced sample of latencies and outputs, so memory and the
cost of a tick stay bounded however long a step runs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from servekit._replica.routing.analysis import (
    OutputKind,
    category_counts,
    error_rate_evidence,
    is_number,
    js_divergence,
    kl_divergence,
    output_kind,
    percentile,
    psi,
)
from servekit._replica.routing.samples import ArmSample
from servekit._spec.canary import Canary
from servekit.errors import RolloutStateError

CanaryState = Literal["running", "paused", "completed", "rolled_back"]
DecisionKind = Literal["promote", "rollback", "hold", "complete"]
Verdict = Literal["pass", "fail", "wait", "skip"]
WINDOW_VALUES = 20_000
"""Latencies and outputs a step's window keeps per arm; beyond it an evenly spaced sample of them."""
MAX_EVENTS = 500
"""Events kept in `status()`; the oldest are dropped beyond this."""
_ENDED: tuple[CanaryState, ...] = ("completed", "rolled_back")


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict over a step's window, with the figures it was made from."""

    name: str
    """'error_rate', 'p95_latency' or 'output'."""
    verdict: Verdict
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason, "figures": self.figures}


@dataclass(frozen=True)
class CanaryDecision:
    """A change of the canary's course; `weights` are the percentages the router applies now."""

    kind: DecisionKind
    at: float
    step: int
    """Index into `Canary.steps` of the step in force after the decision (the failed one on rollback)."""
    candidate_percent: float
    weights: dict[str, float]
    reason: str
    checks: tuple[CheckResult, ...] = ()
    by: Literal["analysis", "operator"] = "analysis"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (also the shape of the decision's event)."""
        return {
            "kind": self.kind,
            "at": self.at,
            "by": self.by,
            "step": self.step,
            "candidate_percent": self.candidate_percent,
            "weights": dict(self.weights),
            "reason": self.reason,
            "checks": [check.to_dict() for check in self.checks],
        }


class _Thinned:
    """An evenly spaced sample of a stream: every `stride`th value, the stride doubling at `limit`.

    Deterministic (no random reservoir), so simulations replay exactly; it keeps memory and the
    cost of a tick bounded however long a step runs.
    """

    def __init__(self, limit: int) -> None:
        self.values: list[Any] = []
        self.seen = 0
        self._stride = 1
        self._limit = limit

    def add(self, value: object) -> None:
        if self.seen % self._stride == 0:
            self.values.append(value)
            if len(self.values) >= self._limit:
                self.values = self.values[::2]
                self._stride *= 2
        self.seen += 1


@dataclass
class _ArmWindow:
    """What one arm answered since the step began: exact counts, thinned latencies and outputs."""

    calls: int = 0
    errors: int = 0
    latencies: _Thinned = field(default_factory=lambda: _Thinned(WINDOW_VALUES))
    outputs: _Thinned = field(default_factory=lambda: _Thinned(WINDOW_VALUES))

    def add(self, sample: ArmSample) -> None:
        self.calls += 1
        self.errors += not sample.ok
        self.latencies.add(sample.latency_s)
        if sample.ok and sample.output is not None:
            self.outputs.add(sample.output)

    def p95(self) -> float | None:
        return percentile(self.latencies.values, 95)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.errors / self.calls if self.calls else None,
            "p95_latency_s": self.p95(),
            "outputs": self.outputs.seen,
        }


class CanaryController:
    """Runs one `Canary` rollout; see the module docstring for the decision rules."""

    def __init__(self, config: Canary, start: float) -> None:
        self._config = config
        self._state: CanaryState = "running"
        self._step = 0
        self._percent = config.steps[0]
        self._step_started = start
        self._windows = self._empty_windows()
        self._checks: tuple[CheckResult, ...] = ()
        self._last_hold: str | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._recorded = 0
        self._event(start, "start", f"candidate {config.candidate!r} starts at {_pct(self._percent)}")

    @property
    def config(self) -> Canary:
        """The rollout's options."""
        return self._config

    @property
    def state(self) -> CanaryState:
        """'running', 'paused', 'completed' or 'rolled_back'."""
        return self._state

    @property
    def weights(self) -> dict[str, float]:
        """The percentages of traffic the router should send to the baseline and the candidate now."""
        return {self._config.baseline: 100.0 - self._percent, self._config.candidate: self._percent}

    @property
    def events_recorded(self) -> int:
        """How many events were recorded so far (more than `status()` keeps, beyond `MAX_EVENTS`)."""
        return self._recorded

    def recent_events(self, count: int) -> list[dict[str, Any]]:
        """The newest `count` events (at most `MAX_EVENTS`), oldest first."""
        events = list(self._events)
        return events[-count:] if count > 0 else []

    def observe(self, sample: ArmSample) -> None:
        """Record one finished call; other arms, shadows and calls that ended before the step are ignored."""
        window = self._windows.get(sample.arm)
        if window is None or sample.shadow or self._state in _ENDED or sample.at < self._step_started:
            return
        window.add(sample)

    def tick(self, now: float) -> CanaryDecision | None:
        """Apply the decision rules at `now`; a decision when the course changes or a baked step holds."""
        if self._state in _ENDED:
            return None
        self._checks = self._evaluate()
        failed = [check for check in self._checks if check.verdict == "fail"]
        if failed:
            reason = "; ".join(check.reason for check in failed)
            return self._rollback(now, f"rolled back: {reason}", "analysis")
        if self._state == "paused" or now - self._step_started < self._config.bake_s:
            return None
        if all(check.verdict in ("pass", "skip") for check in self._checks):
            passed = "; ".join(check.reason for check in self._checks)
            return self._advance(now, f"every check passed: {passed}", "analysis")
        return self._hold(now)

    def pause(self, now: float) -> None:
        """Stop promotions until `resume` (a conclusive failure still rolls back); no-op when paused."""
        self._require_active("pause")
        if self._state == "running":
            self._state = "paused"
            self._event(now, "pause", "paused by operator")

    def resume(self, now: float) -> None:
        """Let promotions happen again after `pause`; no-op when running."""
        self._require_active("resume")
        if self._state == "paused":
            self._state = "running"
            self._event(now, "resume", "resumed by operator")

    def promote_now(self, now: float, *, full: bool = False) -> CanaryDecision:
        """Move to the next step (all the way to 100% with `full`) without waiting for the checks."""
        self._require_active("promote")
        self._checks = self._evaluate()
        if full:
            self._step = len(self._config.steps) - 2
        return self._advance(now, "promoted by operator", "operator")

    def abort(self, now: float) -> CanaryDecision:
        """Roll back to 100% baseline now."""
        self._require_active("abort")
        self._checks = self._evaluate()
        return self._rollback(now, "aborted by operator", "operator")

    def status(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready view: state, step, weights, the window's figures, the last checks and the events."""
        config = self._config
        result: dict[str, Any] = {
            "state": self._state,
            "baseline": config.baseline,
            "candidate": config.candidate,
            "steps": list(config.steps),
            "step": self._step,
            "candidate_percent": self._percent,
            "weights": self.weights,
            "step_started_at": self._step_started,
            "bake_s": config.bake_s,
            "min_samples": config.min_samples,
            "window": {arm: window.to_dict() for arm, window in self._windows.items()},
            "checks": [check.to_dict() for check in self._checks],
            "events": list(self._events),
        }
        if now is not None:
            result["bake_left_s"] = max(0.0, config.bake_s - (now - self._step_started))
        return result

    # --- transitions -------------------------------------------------------------------------

    def _advance(self, now: float, reason: str, by: Literal["analysis", "operator"]) -> CanaryDecision:
        self._step += 1
        self._percent = self._config.steps[self._step]
        done = self._step == len(self._config.steps) - 1
        kind: DecisionKind = "complete" if done else "promote"
        if done:
            self._state = "completed"
        return self._new_step(now, kind, reason, by)

    def _rollback(self, now: float, reason: str, by: Literal["analysis", "operator"]) -> CanaryDecision:
        self._state = "rolled_back"
        self._percent = 0.0
        decision = CanaryDecision("rollback", now, self._step, 0.0, self.weights, reason, self._checks, by)
        return self._decided(decision)

    def _new_step(
        self, now: float, kind: DecisionKind, reason: str, by: Literal["analysis", "operator"]
    ) -> CanaryDecision:
        percent, checks = self._percent, self._checks
        decision = CanaryDecision(kind, now, self._step, percent, self.weights, reason, checks, by)
        self._step_started = now
        self._windows = self._empty_windows()
        self._last_hold = None
        return self._decided(decision)

    def _hold(self, now: float) -> CanaryDecision:
        waiting = [check.reason for check in self._checks if check.verdict == "wait"]
        reason = "holding: " + "; ".join(waiting)
        decision = CanaryDecision("hold", now, self._step, self._percent, self.weights, reason, self._checks)
        headline = ",".join(check.name for check in self._checks if check.verdict == "wait")
        if headline != self._last_hold:  # one event per kind of hold, not one per tick
            self._last_hold = headline
            self._record(decision.to_dict())
        return decision

    def _decided(self, decision: CanaryDecision) -> CanaryDecision:
        self._record(decision.to_dict())
        return decision

    def _record(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._recorded += 1

    def _event(self, now: float, kind: str, reason: str) -> None:
        event = {"kind": kind, "at": now, "by": "operator", "step": self._step}
        event.update(candidate_percent=self._percent, weights=self.weights, reason=reason, checks=[])
        if kind == "start":
            event["by"] = "analysis"
        self._record(event)

    def _require_active(self, action: str) -> None:
        if self._state in _ENDED:
            config = self._config
            raise RolloutStateError(
                f"cannot {action} the canary {config.baseline!r} -> {config.candidate!r}: "
                f"it has already {self._state.replace('_', ' ')}"
            )

    def _empty_windows(self) -> dict[str, _ArmWindow]:
        return {self._config.baseline: _ArmWindow(), self._config.candidate: _ArmWindow()}

    # --- checks ------------------------------------------------------------------------------

    def _evaluate(self) -> tuple[CheckResult, ...]:
        baseline = self._windows[self._config.baseline]
        candidate = self._windows[self._config.candidate]
        return (
            self._error_check(baseline, candidate),
            self._latency_check(baseline, candidate),
            self._output_check(baseline, candidate),
        )

    def _error_check(self, baseline: _ArmWindow, candidate: _ArmWindow) -> CheckResult:
        config = self._config
        evidence = error_rate_evidence(
            baseline.errors,
            baseline.calls,
            candidate.errors,
            candidate.calls,
            tolerance=config.max_error_rate_increase,
            confidence=config.confidence,
        )
        figures = {
            "baseline": _error_figures(baseline, evidence.baseline_rate),
            "candidate": _error_figures(candidate, evidence.candidate_rate),
            "increase": evidence.difference,
            "max_increase": config.max_error_rate_increase,
            "always_valid_p": evidence.p_value,
            "alpha": round(1.0 - config.confidence, 12),
        }
        rates = (
            f"error rate {_pct(100 * evidence.candidate_rate)} (candidate, {candidate.calls} calls) "
            f"vs {_pct(100 * evidence.baseline_rate)} (baseline, {baseline.calls} calls)"
        )
        tolerated = f"max_error_rate_increase {config.max_error_rate_increase:g}"
        if evidence.harmful:
            increase = f"an increase of {evidence.difference:.3g}"
            reason = f"{rates}: {increase} exceeds {tolerated} (always-valid p = {evidence.p_value:.2g})"
            return CheckResult("error_rate", "fail", reason, figures)
        short = self._short_of_samples(baseline.calls, candidate.calls, "calls")
        if short:
            return CheckResult("error_rate", "wait", f"{rates}: {short}", figures)
        if evidence.difference > config.max_error_rate_increase:
            increase = f"an increase of {evidence.difference:.3g}"
            reason = (
                f"{rates}: {increase} is above {tolerated}, not yet conclusively (p = {evidence.p_value:.2g})"
            )
            return CheckResult("error_rate", "wait", reason, figures)
        return CheckResult("error_rate", "pass", f"{rates}: within {tolerated}", figures)

    def _latency_check(self, baseline: _ArmWindow, candidate: _ArmWindow) -> CheckResult:
        limit = self._config.max_p95_ratio
        p95_b, p95_c = baseline.p95(), candidate.p95()
        figures: dict[str, Any] = {"baseline_p95_s": p95_b, "candidate_p95_s": p95_c, "max_ratio": limit}
        short = self._short_of_samples(baseline.calls, candidate.calls, "calls")
        if short or p95_b is None or p95_c is None:
            return CheckResult("p95_latency", "wait", f"p95 latency: {short}", figures)
        ratio = p95_c / p95_b if p95_b > 0 else (1.0 if p95_c == 0 else float("inf"))
        figures["ratio"] = ratio if math.isfinite(ratio) else None  # JSON has no infinity
        said = f"p95 latency {_ms(p95_c)} (candidate) vs {_ms(p95_b)} (baseline): x{ratio:.2f}"
        if ratio > limit:
            return CheckResult("p95_latency", "fail", f"{said} exceeds max_p95_ratio {limit:g}", figures)
        return CheckResult("p95_latency", "pass", f"{said} within max_p95_ratio {limit:g}", figures)

    def _output_check(self, baseline: _ArmWindow, candidate: _ArmWindow) -> CheckResult:
        config = self._config
        if config.output is None:
            return CheckResult("output", "skip", "output check skipped: no output declared")
        kind = self._kind(baseline.outputs.values, candidate.outputs.values)
        values_b = _comparable(baseline.outputs.values, kind)
        values_c = _comparable(candidate.outputs.values, kind)
        seen_b, seen_c = baseline.outputs.seen, candidate.outputs.seen
        figures: dict[str, Any] = {
            "kind": kind,
            "baseline_outputs": seen_b,
            "candidate_outputs": seen_c,
            "max_divergence": config.max_divergence,
        }
        short = self._short_of_samples(seen_b, seen_c, "outputs")
        if not short and not (values_b and values_c):
            short = f"no {kind} outputs to compare"
        if short:
            return CheckResult("output", "wait", f"output distribution: {short}", figures)
        metric, value = self._divergence(kind, values_b, values_c, figures)
        figures.update(metric=metric, divergence=value)
        said = f"output {metric} {value:.3g}"
        limit = f"max_divergence {config.max_divergence:g}"
        if value > config.max_divergence:
            return CheckResult("output", "fail", f"{said} exceeds {limit}", figures)
        return CheckResult("output", "pass", f"{said} within {limit}", figures)

    def _divergence(
        self, kind: OutputKind, values_b: list[object], values_c: list[object], figures: dict[str, Any]
    ) -> tuple[str, float]:
        if kind == "numeric":
            floats_b = [float(v) for v in values_b]  # type: ignore[arg-type]
            floats_c = [float(v) for v in values_c]  # type: ignore[arg-type]
            return "PSI", psi(floats_b, floats_c)
        counts_b, counts_c = category_counts(values_b), category_counts(values_c)
        figures["baseline_counts"] = _top(counts_b)
        figures["candidate_counts"] = _top(counts_c)
        if self._config.divergence == "kl":
            return "KL divergence (bits)", kl_divergence(counts_c, counts_b)
        return "Jensen-Shannon divergence (bits)", js_divergence(counts_b, counts_c)

    def _kind(self, baseline: list[object], candidate: list[object]) -> OutputKind:
        configured = self._config.output_kind
        if configured != "auto":
            return configured
        return output_kind([*baseline, *candidate])

    def _short_of_samples(self, baseline: int, candidate: int, what: str) -> str | None:
        need = self._config.min_samples
        if baseline >= need and candidate >= need:
            return None
        has = f"has {baseline} (baseline) and {candidate} (candidate)"
        return f"needs min_samples {need} {what} on both arms, {has}"


def _error_figures(window: _ArmWindow, rate: float) -> dict[str, Any]:
    return {"calls": window.calls, "errors": window.errors, "rate": rate}


def _comparable(values: list[object], kind: OutputKind) -> list[object]:
    return [value for value in values if is_number(value)] if kind == "numeric" else values


def _top(counts: dict[Hashable, int], limit: int = 20) -> dict[str, int]:
    """The most frequent categories, keyed by their text (JSON keys are strings)."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return {str(category): count for category, count in ordered}


def _pct(percent: float) -> str:
    return f"{percent:.3g}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"
