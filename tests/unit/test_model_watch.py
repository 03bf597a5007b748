"""Pinning bound model tags in a graph, and what a moved tag rolls: pure graph functions."""

from __future__ import annotations

from pathlib import Path

import pytest

import servekit as sk
from servekit._runtime.model_watch import (
    ModelWatcher,
    followed_tags,
    moved_tags,
    pin_models,
    repin,
    tag_key,
)
from servekit._spec.graph import AppGraph, build_graph
from servekit._spec.models import model_refs
from servekit.errors import ModelNotFoundError, ModelStoreUnavailableError


@sk.deployment
class Rolling:
    def __init__(self, weights: str) -> None: ...


@sk.deployment
class InPlace:
    def __init__(self, weights: str) -> None: ...

    def reconfigure_model(self, path: str) -> None: ...


@sk.deployment
class Api:
    def __init__(self, a: sk.DeploymentHandle, b: sk.DeploymentHandle, fixed: list[object]) -> None: ...


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = str(tmp_path / "store")
    for version in ("v1", "v2"):
        (tmp_path / version).write_text(version)
        sk.models.push("clf", tmp_path / version, version=version, store=url)
    sk.models.tag("clf", "v1", "production", store=url)
    return url


def _graph(store: str) -> AppGraph:
    production = sk.model("clf", tag="production", store=store)
    fixed = sk.model("clf", version="v2", store=store)
    return build_graph(Api.bind(Rolling.bind(production), InPlace.bind(production), [fixed]))


def test_model_refs_lists_every_reference_bound_in_the_graph(store: str) -> None:
    found = model_refs(_graph(store).nodes)
    assert {name: [ref.target for ref in refs] for name, refs in found.items()} == {
        "Api": ["clf@v2"],
        "Rolling": ["clf:production"],
        "InPlace": ["clf:production"],
    }


def test_pinning_resolves_each_followed_tag_and_leaves_fixed_versions(store: str) -> None:
    pinned = pin_models(_graph(store))
    assert pinned.nodes["Rolling"].init_args[0].pinned == "v1"
    assert pinned.nodes["Api"].init_args[2][0].pinned is None
    assert [ref.target for ref in followed_tags(pinned, rolling_only=True)] == ["clf:production"]


def test_a_moved_tag_repins_only_the_rolling_deployments(store: str) -> None:
    pinned = pin_models(_graph(store))
    key = tag_key(pinned.nodes["Rolling"].init_args[0])
    assert moved_tags(pinned, {key: "v1"}) == {}
    assert moved_tags(pinned, {key: "v2"}) == {key: "v2"}
    moved = repin(pinned, {key: "v2"}, rolling_only=True)
    assert moved.nodes["Rolling"].init_args[0].pinned == "v2"
    assert moved.nodes["InPlace"] is pinned.nodes["InPlace"]


def test_the_watcher_redeploys_once_per_move_and_not_again_after_a_failure(store: str) -> None:
    graphs = [pin_models(_graph(store))]
    failing = [False]

    def redeploy(graph: AppGraph) -> None:
        if failing[0]:
            raise RuntimeError("v2 cannot load")
        graphs.append(graph)

    watcher = ModelWatcher(lambda: graphs[-1], redeploy, period_s=60)
    assert watcher.check() is False
    sk.models.tag("clf", "v2", "production", store=store)
    failing[0] = True
    assert watcher.check() is False
    assert watcher.last_error is not None
    assert "clf:production -> v2 failed" in watcher.last_error
    assert watcher.check() is False  # the version that failed is not retried on every poll
    failing[0] = False
    sk.models.push("clf", Path(store).parent / "v1", version="v3", store=store)
    sk.models.tag("clf", "v3", "production", store=store)
    assert watcher.check() is True  # a newer version rolls
    assert graphs[-1].nodes["Rolling"].init_args[0].pinned == "v3"
    sk.models.rollback("clf", "production", store=store)
    assert watcher.check() is False  # back at v2, which failed


def test_an_unknown_tag_fails_pinning_with_the_fix(store: str) -> None:
    graph = build_graph(Rolling.bind(sk.model("clf", tag="staging", store=store)))
    with pytest.raises(ModelNotFoundError, match="set it with `servekit models tag clf VERSION staging`"):
        pin_models(graph)


def test_an_unreachable_store_fails_pinning_in_one_line() -> None:
    graph = build_graph(Rolling.bind(sk.model("clf", tag="production", store="nosuchproto://models")))
    with pytest.raises(ModelStoreUnavailableError) as info:
        pin_models(graph)
    assert "\n" not in str(info.value)
    assert "model store 'nosuchproto://models' cannot be opened" in str(info.value)
