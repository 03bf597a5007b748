"""What `servekit build` refuses before writing anything: bound arguments the bundle cannot rebuild."""

from __future__ import annotations

import threading

import pytest

import servekit as sk
from servekit._cli.build import check_rebuildable
from servekit._spec.graph import DeploymentNode, build_graph
from servekit.errors import BundleError


@sk.deployment
class Model:
    def __init__(self, weights: str, scale: object = 1.0) -> None:
        self.weights, self.scale = weights, scale


@sk.deployment
class Api:
    def __init__(self, model: sk.DeploymentHandle, lock: object = None) -> None:
        self.model = model


def _nodes(app: sk.Application) -> dict[str, DeploymentNode]:
    return build_graph(app).nodes


def test_paths_numbers_and_handles_can_be_rebuilt() -> None:
    for node in _nodes(Api.bind(Model.bind("w.pt", scale=2.5))).values():
        check_rebuildable(node, "app.py:app")


def test_a_positional_lambda_is_refused_by_its_parameter_name() -> None:
    node = _nodes(Model.bind(lambda: "w.pt"))["Model"]
    with pytest.raises(BundleError, match=r"deployment 'Model': bound argument 'weights' \(a function"):
        check_rebuildable(node, "app.py:app")


def test_a_keyword_argument_that_cannot_be_pickled_is_refused_by_name() -> None:
    api = _nodes(Api.bind(Model.bind("w.pt"), lock=threading.Lock()))["Api"]
    with pytest.raises(
        BundleError, match=r"deployment 'Api': bound argument 'lock' \(a lock: .*'app.py:app'"
    ):
        check_rebuildable(api, "app.py:app")
