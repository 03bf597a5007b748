"""Routing mechanics as pure functions: weights, sticky hashing, router state, evidence, routers."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import servekit as sk
from servekit._cli.rollout import RolloutError, parse_weights
from servekit._replica.request_context import RequestContext, request_id_from, request_scope
from servekit._replica.routing.evidence import Evidence, merge_views
from servekit._replica.routing.router import Router
from servekit._replica.routing.samples import ArmSample
from servekit._replica.routing.state import RouterState
from servekit._replica.routing.sticky import sticky_arm
from servekit._replica.routing.weights import SmoothWeightedChoice
from servekit._spec.graph import HandleRef, build_graph
from servekit._spec.routing import RouterNode, validate_weights
from servekit.errors import BadRequestError, GraphError


@sk.deployment
class Model:
    def __init__(self, tag: str) -> None:
        self.tag = tag


@sk.deployment
class Api:
    def __init__(self, model: object) -> None:
        self.model = model


def test_smooth_weighted_choice_is_exact_and_interleaved() -> None:
    choice = SmoothWeightedChoice({"v1": 90, "v2": 10})
    picks = [choice.choose() for _ in range(1000)]
    assert Counter(picks) == {"v1": 900, "v2": 100}
    assert "v2" in picks[:10]  # interleaved: no run of 900 v1 first
    prefix = Counter(picks[:137])
    assert abs(prefix["v2"] - 13.7) <= 1


def test_smooth_weighted_choice_gives_a_missing_arms_share_to_the_others() -> None:
    choice = SmoothWeightedChoice({"a": 1, "b": 1, "c": 2})
    picks = Counter(choice.choose({"a", "c"}) for _ in range(300))
    assert picks == {"a": 100, "c": 200}
    assert choice.choose(set()) is None


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ({"v1": -1, "v2": 2}, "negative"),
        ({"v1": 0, "v2": 0}, "all zero"),
        ({"v3": 1}, "no arm 'v3'"),
        ({}, "non-empty map"),
        ({"v1": "x"}, "must be a number"),
        ([1, 2], "non-empty map"),
    ],
)
def test_bad_weight_maps_are_refused_naming_the_problem(weights: object, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        validate_weights(weights, ("v1", "v2"), "clf")


def test_sticky_keys_land_within_one_and_a_half_percent_of_the_weights() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    arms = Counter(sticky_arm(key, {"v1": 90, "v2": 10}) for key in keys)
    assert abs(arms["v2"] / 10_000 - 0.10) <= 0.015
    assert abs(arms["v1"] / 10_000 - 0.90) <= 0.015


def test_reweighting_moves_only_keys_that_had_to_move() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    before = {key: sticky_arm(key, {"v1": 90, "v2": 10}) for key in keys}
    after = {key: sticky_arm(key, {"v1": 80, "v2": 20}) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(before[key] == "v1" and after[key] == "v2" for key in moved)
    assert abs(len(moved) / 10_000 - 0.10) <= 0.015
    assert abs(Counter(after.values())["v2"] / 10_000 - 0.20) <= 0.015


def test_a_sticky_key_keeps_its_arm_and_skips_a_missing_one() -> None:
    weights = {"a": 1.0, "b": 1.0, "c": 1.0}
    arm = sticky_arm("k", weights)
    assert all(sticky_arm("k", weights) == arm for _ in range(5))
    assert sticky_arm("k", weights, {"a", "b", "c"} - {arm or ""}) != arm


def test_router_state_changes_are_validated_versioned_and_atomic() -> None:
    state = RouterState("clf", ("blue", "green"), {"blue": 100})
    first = state.table
    with pytest.raises(BadRequestError):
        state.set_weights({"blue": -1})
    assert state.table is first
    state.set_weights({"blue": 50, "green": 50})
    assert state.table.version == first.version + 1
    assert dict(state.table.weights) == {"blue": 50.0, "green": 50.0}


def test_switch_bakes_then_retires_and_switch_back_restores_the_weights() -> None:
    state = RouterState("clf", ("blue", "green"), {"blue": 100})
    state.switch("green", now=10.0, bake_s=5.0)
    assert dict(state.table.weights) == {"blue": 0.0, "green": 1.0}
    state.switch_back()
    assert dict(state.table.weights) == {"blue": 100.0, "green": 0.0}
    with pytest.raises(BadRequestError, match="no switch to undo"):
        state.switch_back()
    state.switch("green", now=20.0, bake_s=5.0)
    assert state.tick(24.0).mode == "switched"
    retired = state.tick(25.0)
    assert retired.mode == "weighted"
    assert retired.retired == ("blue",)
    with pytest.raises(BadRequestError, match="no arm 'red'"):
        state.switch("red", now=30.0, bake_s=1.0)


def test_evidence_counts_arms_and_credits_outcomes_by_request_id() -> None:
    evidence = Evidence(capacity=3)
    for index in range(5):
        evidence.record(ArmSample("v1", index != 0, 0.01, float(index), request_id=f"r{index}"))
    assert len(evidence.samples()) == 3
    assert evidence.arm_view("v1")["calls"] == 5
    assert evidence.arm_view("v1")["errors"] == 1
    assert evidence.record_outcome("r4", "clicked", 1.0) == "v1"
    assert evidence.record_outcome("unknown", "clicked", 1.0) is None
    assert evidence.outcome_values("v1", "clicked") == [1.0]
    assert evidence.unmatched_outcomes == 1


def test_split_is_validated_when_bound() -> None:
    v1 = Model.options(name="V1").bind("v1")
    with pytest.raises(GraphError, match="no arms"):
        sk.split({})
    with pytest.raises(GraphError, match="negative"):
        sk.split({"v1": v1}, weights={"v1": -1})
    with pytest.raises(GraphError, match="no arm 'v9'"):
        sk.split({"v1": v1}, weights={"v9": 1})
    with pytest.raises(GraphError, match="unbound deployment"):
        sk.split({"v1": Model})  # type: ignore[dict-item]
    with pytest.raises(GraphError, match="sticky"):
        sk.split({"v1": v1}, sticky="body:x")
    with pytest.raises(GraphError, match="shadow_fraction"):
        sk.split({"v1": v1}, shadow={"v3": Model.bind("v3")}, shadow_fraction=2)


def test_a_split_bound_at_depth_two_becomes_a_router_whose_arms_start_first() -> None:
    router = sk.split(
        {"v1": Model.options(name="V1").bind("1"), "v2": Api.options(name="Sub").bind(Model.bind("2"))},
        weights={"v1": 3, "v2": 1},
        name="clf",
    )
    graph = build_graph(Api.bind(Api.options(name="Mid").bind(router)))
    assert graph.nodes["Mid"].init_args == (HandleRef("clf"),)
    assert graph.routers["clf"].arms == {"v1": "V1", "v2": "Sub"}
    assert set(graph.nodes["Mid"].dependencies) == {"V1", "Sub"}
    assert list(graph.nodes).index("Sub") < list(graph.nodes).index("Mid")


def test_request_ids_from_clients_are_kept_only_when_valid() -> None:
    assert request_id_from("abc-123") == "abc-123"
    assert request_id_from("bad id with spaces") != "bad id with spaces"
    assert len(request_id_from(None)) == 32


async def test_a_shadow_that_fails_or_hangs_never_reaches_the_caller() -> None:
    release = asyncio.Event()

    async def call(
        deployment: str, method: str, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        if deployment == "Broken":
            raise RuntimeError("shadow crashed")
        if deployment == "Slow":
            await release.wait()
        return f"{deployment}:{args[0]}"

    async def stream(*_: object) -> object:
        raise AssertionError("not streamed")

    node = RouterNode(
        "clf", {"v1": "V1"}, {"v1": 1.0}, shadows={"v3": "Broken", "v4": "Slow"}, shadow_fraction=1.0
    )
    state = RouterState("clf", ("v1",), {"v1": 1})
    router = Router(node, lambda: state.table, call, stream, shadow_capacity=4)  # type: ignore[arg-type]
    with request_scope(RequestContext("r1")):
        results = [await router.call("__call__", (i,), {}) for i in range(6)]
    assert results == [f"V1:{i}" for i in range(6)]
    await asyncio.sleep(0)
    view = router.view(state.table)
    assert view["shadows"]["v3"]["errors"] == view["shadows"]["v3"]["calls"] > 0
    assert view["shadow_drops"] > 0  # the hanging shadow filled the bounded in-flight set
    release.set()
    router.close()


async def test_an_arm_without_replicas_gets_no_share_unless_told_to_fail() -> None:
    async def call(
        deployment: str, method: str, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        return deployment

    up = {"V1": True, "V2": False}
    node = RouterNode("clf", {"v1": "V1", "v2": "V2"}, {"v1": 1.0, "v2": 1.0})
    state = RouterState("clf", ("v1", "v2"), {"v1": 1, "v2": 1})
    router = Router(node, lambda: state.table, call, call, available=up.__getitem__)  # type: ignore[arg-type]
    assert {await router.call("f", (), {}) for _ in range(10)} == {"V1"}
    assert router.view(state.table)["notes"]
    failing = Router(
        RouterNode("clf", {"v2": "V2"}, {"v2": 1.0}, on_unavailable="fail"),
        lambda: RouterState("clf", ("v2",), {"v2": 1}).table,
        call,  # type: ignore[arg-type]
        call,  # type: ignore[arg-type]
        available=up.__getitem__,
    )
    with pytest.raises(sk.errors.DeploymentUnavailableError, match="on_unavailable='fail'"):
        await failing.call("f", (), {})


def test_views_from_several_processes_merge_into_one() -> None:
    def view(calls: int, errors: int, p95: float, clicks: int, mean: float) -> dict[str, object]:
        arm = {
            "calls": calls,
            "errors": errors,
            "p50_ms": 1.0,
            "p95_ms": p95,
            "p99_ms": p95,
            "available": True,
        }
        arm["outcomes"] = {"clicked": {"count": clicks, "mean": mean}}
        return {"name": "clf", "arms": {"v1": arm}, "shadow_drops": 1, "notes": [], "shadow_comparison": {}}

    merged = merge_views([view(10, 1, 5.0, 2, 1.0), view(30, 2, 9.0, 6, 0.0)])
    arm = merged["arms"]["v1"]
    assert (arm["calls"], arm["errors"], arm["p95_ms"]) == (40, 3, 9.0)
    assert arm["error_rate"] == pytest.approx(3 / 40)
    assert arm["outcomes"]["clicked"] == {"count": 8, "mean": pytest.approx(0.25)}
    assert merged["shadow_drops"] == 2
    assert merged["processes"] == 2


def test_the_rollout_cli_parses_weights_and_names_a_bad_pair() -> None:
    assert parse_weights(["v1=90", "v2=10.5"]) == {"v1": 90.0, "v2": 10.5}
    with pytest.raises(RolloutError, match="'v1:90'"):
        parse_weights(["v1:90"])
    with pytest.raises(RolloutError, match="'v2=x'"):
        parse_weights(["v2=x"])
