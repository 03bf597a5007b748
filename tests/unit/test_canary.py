"""The canary controller, pinned by simulation: seeded traffic through two arms, a fake clock, decisions out."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

import servekit as sk
from servekit._replica.routing.canary import WINDOW_VALUES, CanaryController, CanaryDecision
from servekit._replica.routing.samples import ArmSample
from servekit.errors import GraphError, RolloutStateError

LABELS = {"cat": 0.6, "dog": 0.3, "bird": 0.1}


@dataclass(frozen=True)
class Arm:
    """How a simulated arm answers: its error rate, typical latency and label distribution."""

    error_rate: float = 0.0
    latency_s: float = 0.05
    labels: dict[str, float] = field(default_factory=lambda: dict(LABELS))
    score_shift: float | None = None
    """With a value, outputs are numbers drawn around it instead of labels."""

    def answer(self, rng: random.Random) -> tuple[bool, float, object]:
        ok = rng.random() >= self.error_rate
        latency = self.latency_s * rng.lognormvariate(0.0, 0.25)
        if not ok:
            return False, latency, None
        if self.score_shift is not None:
            return True, latency, rng.gauss(self.score_shift, 1.0)
        label = rng.choices(list(self.labels), weights=list(self.labels.values()))[0]
        return True, latency, label


@dataclass
class Run:
    controller: CanaryController
    decisions: list[CanaryDecision]
    """Every decision that changed the weights (holds left out)."""
    holds: list[CanaryDecision]


def canary(**options: object) -> sk.Canary:
    defaults: dict[str, object] = {
        "baseline": "v1",
        "candidate": "v2",
        "steps": [10, 50, 100],
        "bake_s": 30,
        "min_samples": 100,
        "max_error_rate_increase": 0.01,
        "max_p95_ratio": 1.5,
        "max_divergence": 0.05,
        "output": lambda result: result,
    }
    return sk.Canary(**{**defaults, **options})  # type: ignore[arg-type]


def simulate(
    config: sk.Canary,
    baseline: Arm,
    candidate: Arm,
    *,
    until: float,
    rate: float = 100.0,
    seed: int = 0,
    controller: CanaryController | None = None,
) -> Run:
    """`rate` calls a second from t=0 to `until`, each to an arm by the live weights; a tick a second."""
    rng = random.Random(seed)
    controller = controller or CanaryController(config, start=0.0)
    arms = {config.baseline: baseline, config.candidate: candidate}
    decisions, holds = [], []
    calls_per_tick = round(rate)
    for second in range(round(until)):
        for call in range(calls_per_tick):
            now = second + (call + 1) / calls_per_tick
            share = controller.weights[config.candidate]
            name = config.candidate if rng.random() * 100 < share else config.baseline
            ok, latency, output = arms[name].answer(rng)
            controller.observe(ArmSample(name, ok, latency, now, output=output))
        decision = controller.tick(second + 1.0)
        if decision is not None:
            (holds if decision.kind == "hold" else decisions).append(decision)
        if controller.state in ("completed", "rolled_back"):
            break
    return Run(controller, decisions, holds)


def test_an_equivalent_candidate_promotes_through_every_step_to_100() -> None:
    run = simulate(canary(), Arm(), Arm(), until=120)

    assert [(d.kind, d.at, d.candidate_percent) for d in run.decisions] == [
        ("promote", 30.0, 50.0),
        ("complete", 60.0, 100.0),
    ]
    assert run.controller.state == "completed"
    assert run.controller.weights == {"v1": 0.0, "v2": 100.0}
    assert all(check.verdict == "pass" for check in run.decisions[-1].checks)


@pytest.mark.parametrize("seed", range(8))
def test_an_equivalent_candidate_with_some_errors_is_not_rolled_back(seed: int) -> None:
    run = simulate(canary(), Arm(error_rate=0.02), Arm(error_rate=0.02), until=120, seed=seed)

    assert run.controller.state == "completed", run.decisions[-1].reason


def test_a_candidate_that_shifts_the_labels_is_rolled_back_within_the_bake_window() -> None:
    shifted = Arm(labels={"cat": 0.2, "dog": 0.3, "bird": 0.5})

    run = simulate(canary(), Arm(), shifted, until=120)

    [decision] = run.decisions
    assert decision.kind == "rollback"
    assert decision.at < 30  # the step's bake_s
    assert decision.weights == {"v1": 100.0, "v2": 0.0}
    output = next(check for check in decision.checks if check.name == "output")
    assert output.verdict == "fail"
    assert output.figures["divergence"] > 0.05
    assert output.figures["candidate_outputs"] >= 100
    assert "Jensen-Shannon" in decision.reason


def test_a_candidate_failing_5_percent_of_calls_is_rolled_back_within_the_bake_window() -> None:
    config = canary(bake_s=120)

    run = simulate(config, Arm(), Arm(error_rate=0.05), until=240)

    [decision] = run.decisions
    assert decision.kind == "rollback"
    assert decision.at < 120
    errors = next(check for check in decision.checks if check.name == "error_rate")
    assert errors.verdict == "fail"
    assert errors.figures["always_valid_p"] <= 0.05
    assert errors.figures["baseline"]["errors"] == 0
    assert "error rate" in decision.reason
    assert run.controller.weights == {"v1": 100.0, "v2": 0.0}


def test_a_slower_candidate_is_rolled_back_on_p95() -> None:
    run = simulate(canary(), Arm(), Arm(latency_s=0.15), until=120)

    [decision] = run.decisions
    assert decision.kind == "rollback"
    latency = next(check for check in decision.checks if check.name == "p95_latency")
    assert latency.verdict == "fail"
    assert latency.figures["ratio"] > 1.5


def test_shifted_numeric_outputs_are_rolled_back_on_psi() -> None:
    config = canary(max_divergence=0.25)

    run = simulate(config, Arm(score_shift=0.0), Arm(score_shift=1.0), until=120)

    [decision] = run.decisions
    output = next(check for check in decision.checks if check.name == "output")
    assert (decision.kind, output.verdict, output.figures["kind"], output.figures["metric"]) == (
        "rollback",
        "fail",
        "numeric",
        "PSI",
    )


def test_equal_numeric_outputs_promote() -> None:
    run = simulate(canary(max_divergence=0.25), Arm(score_shift=0.0), Arm(score_shift=0.0), until=120)

    assert run.controller.state == "completed"


def test_too_few_samples_hold_the_step_and_say_so_once() -> None:
    run = simulate(canary(bake_s=10), Arm(), Arm(), until=40, rate=5)

    assert run.decisions == []
    assert len(run.holds) == 31  # every tick from the bake's end (t=10) to t=40
    assert run.holds[0].at == 10.0
    assert run.holds[0].weights == {"v1": 90.0, "v2": 10.0}
    assert "needs min_samples 100" in run.holds[0].reason
    holds = [event for event in run.controller.status()["events"] if event["kind"] == "hold"]
    assert len(holds) == 1
    assert run.controller.state == "running"


def test_nothing_is_decided_before_the_bake_even_with_enough_samples() -> None:
    controller = CanaryController(canary(bake_s=30), start=0.0)

    run = simulate(canary(), Arm(), Arm(), until=29, controller=controller)

    assert run.decisions == run.holds == []
    assert [check["verdict"] for check in controller.status()["checks"]] == ["pass", "pass", "pass"]


def test_a_paused_canary_does_not_promote_until_resumed() -> None:
    config = canary()
    controller = CanaryController(config, start=0.0)
    controller.pause(now=1.0)

    paused = simulate(config, Arm(), Arm(), until=60, controller=controller)
    assert paused.decisions == []
    assert controller.state == "paused"

    controller.resume(now=60.0)
    assert controller.tick(60.0) is not None
    assert controller.weights == {"v1": 50.0, "v2": 50.0}
    kinds = [event["kind"] for event in controller.status()["events"]]
    assert kinds == ["start", "pause", "resume", "promote"]


def test_a_paused_canary_still_rolls_back_on_a_conclusive_failure() -> None:
    config = canary()
    controller = CanaryController(config, start=0.0)
    controller.pause(now=0.0)

    run = simulate(config, Arm(), Arm(error_rate=0.3), until=60, controller=controller)

    assert [d.kind for d in run.decisions] == ["rollback"]
    assert controller.state == "rolled_back"


def test_promote_now_moves_one_step_and_full_completes() -> None:
    controller = CanaryController(canary(steps=[1, 10, 50, 100]), start=0.0)

    step = controller.promote_now(now=5.0)
    assert (step.kind, step.by, step.candidate_percent) == ("promote", "operator", 10.0)
    done = controller.promote_now(now=6.0, full=True)
    assert (done.kind, done.candidate_percent, controller.state) == ("complete", 100.0, "completed")
    assert controller.weights == {"v1": 0.0, "v2": 100.0}


def test_abort_rolls_back_to_all_baseline_and_ends_the_canary() -> None:
    controller = CanaryController(canary(), start=0.0)

    decision = controller.abort(now=3.0)

    assert (decision.kind, decision.by, decision.reason) == ("rollback", "operator", "aborted by operator")
    assert controller.weights == {"v1": 100.0, "v2": 0.0}
    assert controller.tick(100.0) is None
    with pytest.raises(
        RolloutStateError, match="cannot promote the canary 'v1' -> 'v2': it has already rolled back"
    ):
        controller.promote_now(now=4.0)
    with pytest.raises(RolloutStateError, match="pause"):
        controller.pause(now=4.0)


def test_events_carry_times_weights_and_every_checks_figures() -> None:
    run = simulate(canary(), Arm(), Arm(), until=120)

    status = run.controller.status(now=60.0)
    json.dumps(status, allow_nan=False)  # JSON-able as it is
    start, promote, complete = status["events"]
    assert (start["kind"], start["at"], start["weights"]) == ("start", 0.0, {"v1": 90.0, "v2": 10.0})
    assert (promote["kind"], promote["at"], promote["weights"]) == ("promote", 30.0, {"v1": 50.0, "v2": 50.0})
    assert complete["kind"] == "complete"
    checks = {check["name"]: check for check in promote["checks"]}
    assert set(checks) == {"error_rate", "p95_latency", "output"}
    assert checks["error_rate"]["figures"]["candidate"]["calls"] >= 100
    assert checks["p95_latency"]["figures"]["ratio"] > 0
    assert 0 <= checks["output"]["figures"]["divergence"] <= 0.05
    assert status["state"] == "completed"
    assert status["bake_left_s"] == 30.0


def test_status_shows_the_current_window() -> None:
    controller = CanaryController(canary(), start=0.0)
    controller.observe(ArmSample("v1", True, 0.01, 1.0, output="cat"))
    controller.observe(ArmSample("v2", False, 0.02, 1.0))

    window = controller.status()["window"]

    assert window["v1"] == {"calls": 1, "errors": 0, "error_rate": 0.0, "p95_latency_s": 0.01, "outputs": 1}
    assert window["v2"]["errors"] == 1


def test_a_long_window_keeps_exact_counts_and_an_evenly_spaced_sample_of_latencies() -> None:
    controller = CanaryController(canary(), start=0.0)
    calls = 5 * WINDOW_VALUES
    for index in range(calls):
        controller.observe(ArmSample("v1", index % 100 != 0, index / calls, 1.0, output="cat"))

    window = controller.status()["window"]["v1"]

    assert (window["calls"], window["errors"], window["outputs"]) == (
        calls,
        calls // 100,
        calls - calls // 100,
    )
    assert window["p95_latency_s"] == pytest.approx(0.95, abs=1e-3)


def test_shadows_other_arms_and_calls_from_before_the_step_are_not_counted() -> None:
    controller = CanaryController(canary(), start=10.0)
    controller.observe(ArmSample("v2", True, 0.01, 11.0, shadow=True))
    controller.observe(ArmSample("v3", True, 0.01, 11.0))
    controller.observe(ArmSample("v2", True, 0.01, 9.0))

    assert {arm: w["calls"] for arm, w in controller.status()["window"].items()} == {"v1": 0, "v2": 0}


def test_a_candidate_slower_than_an_instant_baseline_fails_with_json_safe_figures() -> None:
    controller = CanaryController(canary(min_samples=5, output=None), start=0.0)
    for index in range(5):
        controller.observe(ArmSample("v1", True, 0.0, 1.0 + index))
        controller.observe(ArmSample("v2", True, 0.2, 1.0 + index))

    decision = controller.tick(6.0)

    assert decision is not None
    assert decision.kind == "rollback"
    assert decision.checks[1].figures["ratio"] is None
    json.dumps(decision.to_dict(), allow_nan=False)


def test_without_a_declared_output_the_output_check_is_skipped() -> None:
    run = simulate(canary(output=None), Arm(), Arm(labels={"other": 1.0}), until=120)

    assert run.controller.state == "completed"
    assert run.decisions[0].checks[-1].verdict == "skip"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": [50, 10, 100]}, "steps must increase"),
        ({"steps": [10, 50]}, "steps must end at 100"),
        ({"steps": [100]}, "at least one analysed step"),
        ({"steps": []}, "steps must not be empty"),
        ({"steps": [0, 100]}, "above 0"),
        ({"candidate": "v1"}, "different arms"),
        ({"bake_s": -1}, "bake_s"),
        ({"min_samples": 0}, "min_samples"),
        ({"max_p95_ratio": 0.5}, "max_p95_ratio"),
        ({"confidence": 1.0}, "confidence"),
        ({"output_kind": "ordinal"}, "output_kind"),
        ({"bake": 3}, "bake"),
    ],
)
def test_bad_canary_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        canary(**options)


def test_validate_arms_names_the_missing_arm() -> None:
    config = canary()
    config.validate_arms(["v1", "v2", "v3"])

    with pytest.raises(
        GraphError, match=r"canary candidate 'v2' is not an arm of this router; its arms are 'v1', 'v3'"
    ):
        config.validate_arms(["v1", "v3"])


def test_extract_output_applies_the_declared_function_and_tolerates_misses() -> None:
    config = canary(output=lambda result: result["label"])

    assert config.extract_output({"label": "cat"}) == "cat"
    assert config.extract_output("no label") is None
    assert canary(output=None).extract_output({"label": "cat"}) is None
