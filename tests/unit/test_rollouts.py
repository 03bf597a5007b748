"""`Rollouts` (canaries applied to router states) and the mergeable A/B state, as pure code."""

from __future__ import annotations

import pytest

from servekit._replica.routing.ab import ABTest, ab_report, ab_state
from servekit._replica.routing.evidence import Evidence
from servekit._replica.routing.rollouts import Rollouts, canary_from_body
from servekit._replica.routing.samples import ArmSample
from servekit._replica.routing.state import RouterState
from servekit._spec.canary import Canary
from servekit.errors import BadRequestError, NotFoundError, RolloutStateError


def _state() -> RouterState:
    return RouterState("clf", ("v1", "v2", "v3"), {"v1": 1})


def test_a_canary_sets_its_weights_and_its_decisions_apply_atomically() -> None:
    state, rollouts = _state(), Rollouts()
    rollouts.start(
        state, Canary(baseline="v1", candidate="v2", steps=[10, 100], bake_s=5, min_samples=3), 0.0
    )
    assert state.table.weights == {"v1": 90.0, "v2": 10.0, "v3": 0.0}
    samples = [ArmSample(arm, True, 0.01, 1.0 + i / 100) for i in range(3) for arm in ("v1", "v2")]
    rollouts.observe("clf", samples)
    assert rollouts.fed_until("clf") == samples[-1].at
    assert rollouts.tick({"clf": state}, 2.0) == []  # baking
    (decision,) = rollouts.tick({"clf": state}, 6.0)
    assert decision.kind == "complete"
    assert state.table.weights == {"v1": 0.0, "v2": 100.0, "v3": 0.0}
    assert rollouts.wanted() == []
    with pytest.raises(RolloutStateError, match="already completed"):
        rollouts.act(state, "abort", 7.0)


def test_operator_actions_and_their_errors() -> None:
    state, rollouts = _state(), Rollouts()
    with pytest.raises(NotFoundError, match="router 'clf' has no canary"):
        rollouts.act(state, "pause", 0.0)
    with pytest.raises(BadRequestError, match="candidate 'v9' is not an arm"):
        rollouts.start(state, Canary(baseline="v1", candidate="v9"), 0.0)
    rollouts.start(state, Canary(baseline="v1", candidate="v3", steps=[5, 50, 100]), 0.0)
    with pytest.raises(RolloutStateError, match="already runs a canary"):
        rollouts.start(state, Canary(baseline="v1", candidate="v2"), 0.0)
    assert rollouts.act(state, "pause", 1.0)["state"] == "paused"
    assert rollouts.act(state, "promote", 2.0)["weights"] == {"v1": 50.0, "v3": 50.0}
    assert state.table.weights["v3"] == 50.0
    with pytest.raises(BadRequestError, match="unknown canary action 'jump'"):
        rollouts.act(state, "jump", 3.0)
    assert rollouts.act(state, "abort", 3.0)["state"] == "rolled_back"
    assert state.table.weights == {"v1": 100.0, "v2": 0.0, "v3": 0.0}


def test_a_canary_from_json_defaults_its_baseline_to_the_heaviest_other_arm() -> None:
    assert canary_from_body({"candidate": "v2"}, _state()).baseline == "v1"
    with pytest.raises(BadRequestError, match="steps"):
        canary_from_body({"candidate": "v2", "steps": [50, 10]}, _state())
    with pytest.raises(BadRequestError, match="candidate arm"):
        canary_from_body({"steps": [10, 100]}, _state())


def test_ab_states_of_several_processes_merge_into_the_report_of_all_their_calls() -> None:
    parts, whole = [Evidence(), Evidence()], ABTest(["a", "b"])
    for i in range(40):
        arm = "ab"[i % 2]
        sample = ArmSample(arm, i % 7 != 0, 0.001 * i, float(i), request_id=f"r{i}")
        parts[i % 4 // 2].record(sample)
        parts[i % 4 // 2].record_outcome(f"r{i}", "clicked", float(i % 5) + (arm == "b"))
        whole.observe(sample)
        whole.record(arm, "clicked", float(i % 5) + (arm == "b"))
    merged = ab_report(["a", "b"], [ab_state(part, ["a", "b"]) for part in parts])
    expected = whole.report()
    for arm in ("a", "b"):
        assert merged["arms"][arm]["calls"] == expected["arms"][arm]["calls"]
        assert merged["arms"][arm]["errors"] == expected["arms"][arm]["errors"]
        got, want = merged["arms"][arm]["outcomes"]["clicked"], expected["arms"][arm]["outcomes"]["clicked"]
        assert got["n"] == want["n"]
        assert got["mean"] == pytest.approx(want["mean"])
        assert got["std"] == pytest.approx(want["std"])
    assert merged["comparisons"]["clicked"][0]["p_value"] == pytest.approx(
        expected["comparisons"]["clicked"][0]["p_value"]
    )
