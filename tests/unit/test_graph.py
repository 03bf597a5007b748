"""Building app graphs: handles as arguments, node naming, and errors that name the deployment."""

from __future__ import annotations

from typing import Any

import pytest

import servekit as sk
from servekit._spec.graph import HandleRef, build_graph
from servekit.errors import GraphError


@sk.deployment
class Leaf:
    def __init__(self, weights: str = "w") -> None:
        self.weights = weights


@sk.deployment
class Router:
    def __init__(self, models: dict[str, Any], extras: list[Any]) -> None:
        self.models = models


@sk.deployment
def echo(x: Any) -> Any:
    return x


def test_nested_bound_deployments_become_handle_refs() -> None:
    graph = build_graph(Router.bind({"a": Leaf.bind("a.pt")}, extras=[Leaf.bind("b.pt")]))
    router = graph.ingress_node
    assert router.init_args == ({"a": HandleRef("Leaf")},)
    assert router.init_kwargs == {"extras": [HandleRef("Leaf_1")]}
    assert set(graph.nodes) == {"Router", "Leaf", "Leaf_1"}


def test_dependencies_start_before_their_users() -> None:
    graph = build_graph(Router.bind({"a": Leaf.bind()}, extras=[]))
    assert list(graph.nodes) == ["Leaf", "Router"]
    assert graph.nodes["Router"].dependencies == ("Leaf",)


def test_the_same_bound_node_is_shared_not_duplicated() -> None:
    shared = Leaf.bind()
    graph = build_graph(Router.bind({"a": shared, "b": shared}, extras=[]))
    assert set(graph.nodes) == {"Router", "Leaf"}


def test_renamed_options_give_distinct_names() -> None:
    graph = build_graph(Router.bind({"v1": Leaf.options(name="V1").bind()}, extras=[Leaf.bind()]))
    assert set(graph.nodes) == {"Router", "V1", "Leaf"}


def test_unbound_deployment_as_app_is_an_error() -> None:
    with pytest.raises(GraphError, match=r"'Leaf' is not bound: pass Leaf.bind\(\.\.\.\)"):
        build_graph(Leaf)


def test_missing_ingress_is_an_error() -> None:
    with pytest.raises(GraphError, match="no ingress"):
        build_graph("not an app")


def test_unbound_deployment_as_argument_is_an_error() -> None:
    with pytest.raises(GraphError, match="'Router' got the unbound deployment 'Leaf'"):
        build_graph(Router.bind({"a": Leaf}, extras=[]))


def test_arguments_must_match_the_constructor() -> None:
    with pytest.raises(GraphError, match=r"deployment 'Leaf': bind\(\) arguments do not match"):
        build_graph(Leaf.bind("a", "b", "c"))
    with pytest.raises(GraphError, match="unexpected keyword argument 'weight'"):
        build_graph(Leaf.bind(weight="x"))


def test_function_deployments_take_no_arguments() -> None:
    with pytest.raises(GraphError, match="'echo' is a function"):
        build_graph(echo.bind(1))


def test_cycles_are_detected_and_named() -> None:
    extras: list[Any] = []
    router = Router.bind({}, extras=extras)
    extras.append(router)  # only possible by mutating an argument after bind
    with pytest.raises(GraphError, match="cycle: Router -> Router"):
        build_graph(router)
