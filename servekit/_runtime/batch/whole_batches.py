"""Whole batches for `@sk.batch` methods: one call per batch of rows instead of one per row.

When batch scoring calls an `@sk.batch` method that takes one item, the ingress class is served
as a subclass with one more method, `SCORE_ROWS`, which hands the decorated function a list of
items directly: the rows are grouped by the scorer (`batch_size` at a time), so the model gets
the batches `@sk.batch` would have formed, without a queue round trip per row.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from servekit._replica.batching import batched_state
from servekit._spec.deployment import Deployment
from servekit._spec.graph import AppGraph

SCORE_ROWS = "servekit_score_rows"


def batched_method(graph: AppGraph, method: str) -> bool:
    """Whether the ingress's `method` is a unary `@sk.batch` method taking one item."""
    deployment = graph.ingress_node.deployment
    if deployment.is_function:
        return False
    state = batched_state(getattr(deployment.target, method, None))
    if state is None or state.streaming or not state.is_method:
        return False
    return len(inspect.signature(state.func).parameters) == 2  # self and the items


def with_whole_batches(graph: AppGraph, method: str) -> AppGraph:
    """`graph` with its ingress class extended by `SCORE_ROWS`, calling `method`'s function on a list."""
    node = graph.ingress_node
    target = node.deployment.target
    state = batched_state(getattr(target, method))
    assert state is not None
    func = state.func
    score_rows: Any
    if inspect.iscoroutinefunction(func):

        async def score_rows(self: Any, items: list[Any]) -> list[Any]:
            return list(await func(self, items))

    else:

        def score_rows(self: Any, items: list[Any]) -> list[Any]:
            return list(func(self, items))

    namespace = {SCORE_ROWS: score_rows, "__module__": target.__module__, "__qualname__": target.__qualname__}
    scoring = type(target.__name__, (target,), namespace)  # type: ignore[arg-type]
    deployment = Deployment(scoring, node.deployment.config)
    return replace(graph, nodes={**graph.nodes, node.name: replace(node, deployment=deployment)})
