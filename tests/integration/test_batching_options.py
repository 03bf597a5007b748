"""A deployment's `batching` option: applied at replica start, and in place on a redeploy.

Real apps through `sk.run`, with in-process replicas and with worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from process_apps import Echo

import servekit as sk
from servekit.errors import DeploymentOptionError, DeploymentStartError

ISOLATIONS = ["in_process", "process"]


def app(isolation: str, **batching: sk.BatchOptions) -> sk.Application:
    return Echo.options(isolation=isolation, num_replicas=2, batching=batching).bind()


def replicas(handle: sk.AppHandle) -> list[dict[str, Any]]:
    handle._running.thread.run(handle._running.runtime.refresh_stats())  # process replicas report on probe
    return list(handle.status()["deployments"]["Echo"]["replicas"])


MAX_CALLS = 200
"""Calls `double_options` makes at most (the router picks the less loaded of two replicas, at
random between equals: eight calls in a row can all land on one)."""


def double_options(handle: sk.AppHandle) -> list[dict[str, Any]]:
    """The options each replica's `double` queue runs with (each replica is called first: calls
    go on, up to `MAX_CALLS`, until the router has sent at least one to each replica)."""
    found: list[Any] = []
    for _ in range(MAX_CALLS // 8):
        for _ in range(8):
            assert handle.double(1.0).result() == 2.0
        found = [replica["batching"].get("double", {}).get("options") for replica in replicas(handle)]
        if all(found):
            return found
    raise AssertionError(f"a replica formed no batch in {MAX_CALLS} calls: {found}")


@pytest.fixture(params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def running(isolation: str) -> Iterator[sk.AppHandle]:
    with sk.run(app(isolation, double=sk.BatchOptions(max_batch_size=2))) as handle:
        yield handle


def test_batching_overrides_apply_when_replicas_start(running: sk.AppHandle) -> None:
    for options in double_options(running):
        assert options == {
            "max_batch_size": 2,
            "max_wait_ms": 50.0,
            "max_concurrent_batches": 1,
            "wait": "adaptive",
        }


def test_a_redeploy_that_changes_only_batching_keeps_every_replica(
    running: sk.AppHandle, isolation: str
) -> None:
    double_options(running)
    before = [(replica["id"], replica["pid"]) for replica in replicas(running)]
    running.redeploy(
        app(isolation, double=sk.BatchOptions(max_batch_size=16, max_wait_ms=1, max_concurrent_batches=2))
    )
    for options in double_options(running):
        assert options == {
            "max_batch_size": 16,
            "max_wait_ms": 1.0,
            "max_concurrent_batches": 2,
            "wait": "adaptive",
        }
    assert [(replica["id"], replica["pid"]) for replica in replicas(running)] == before
    running.redeploy(app(isolation))  # dropping the override goes back to the decorator's options
    for options in double_options(running):
        assert options["max_batch_size"] == 8
    assert [(replica["id"], replica["pid"]) for replica in replicas(running)] == before


def test_a_redeploy_naming_a_method_that_is_not_batched_is_refused(
    running: sk.AppHandle, isolation: str
) -> None:
    with pytest.raises(DeploymentOptionError, match=r"batching names 'echo', which is not a @batch method"):
        running.redeploy(app(isolation, echo=sk.BatchOptions(max_batch_size=4)))
    for options in double_options(running):
        assert options["max_batch_size"] == 2


@pytest.mark.parametrize("method", ["predict", "echo"])
def test_a_start_naming_an_unknown_or_unbatched_method_fails_clearly(isolation: str, method: str) -> None:
    with pytest.raises(
        DeploymentStartError, match=rf"batching names '{method}', which is not a @batch method"
    ):
        sk.run(app(isolation, **{method: sk.BatchOptions(max_batch_size=4)}))
