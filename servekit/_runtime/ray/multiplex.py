"""Multiplexing on Ray: `@servekit.multiplexed` methods run on Ray Serve's own `serve.multiplexed`.

In: a replica's user instance and its `@multiplexed` methods. Out: each method's per-instance
multiplexer replaced by `RayModelMultiplexer`, whose loads and LRU are Ray Serve's (so Ray's
router sends requests to the replicas that report holding their model), with servekit's
per-model counters and one-line load errors kept on top.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve

from servekit._replica.multiplex import MODEL_ID_HEADER, ModelMultiplexer, ModelStats, multiplexed_functions
from servekit.errors import ModelLoadError

_WRAPPER_ATTR = "__serve_multiplex_wrapper"
"""Where `serve.multiplexed` keeps its LRU on the decorated function (for a plain function)."""


class RayModelMultiplexer(ModelMultiplexer):
    """A `ModelMultiplexer` whose cache is Ray Serve's `serve.multiplexed` LRU."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], max_models: int, owner: str) -> None:
        super().__init__(load, max_models, owner)

        async def load_model(model_id: str) -> Any:
            return await self._timed_load(model_id)

        self._loader = load_model
        self._get = serve.multiplexed(max_num_models_per_replica=max_models)(load_model)

    @property
    def loaded(self) -> list[str]:
        """The ids Ray's LRU holds, least recently used first."""
        wrapper = getattr(self._loader, _WRAPPER_ATTR, None)
        return [] if wrapper is None else list(wrapper.models)

    async def get(self, model_id: str) -> Any:
        """The model for `model_id`, through Ray Serve's multiplexing."""
        if not model_id:
            raise ModelLoadError(
                f"{self._owner}: the request names no model; send the header {MODEL_ID_HEADER} "
                "or call handle.options(multiplexed_model_id=...)"
            )
        stats = self.stats.setdefault(model_id, ModelStats())
        before = set(self.loaded)
        if model_id in before:
            stats.hits += 1
        else:
            stats.misses += 1
        model = await self._get(model_id)
        for evicted in before - set(self.loaded) - {model_id}:
            self.stats.setdefault(evicted, ModelStats()).evictions += 1
        return model

    async def _timed_load(self, model_id: str) -> Any:
        stats = self.stats.setdefault(model_id, ModelStats())
        started = time.perf_counter()
        try:
            model = await self._load(model_id)
        except Exception as exc:
            stats.failures += 1
            raise ModelLoadError(
                f"{self._owner}: model id {model_id!r} failed to load: {type(exc).__name__}: {exc}; "
                "other models keep serving; check the id or its files"
            ) from exc
        stats.loads += 1
        stats.load_s += time.perf_counter() - started
        return model


def use_ray_multiplexing(instance: Any) -> None:
    """Make each `@multiplexed` method of `instance` load through Ray Serve's multiplexing."""
    for function in multiplexed_functions(type(instance)).values():

        async def load(model_id: str, function: Any = function) -> Any:
            return await function.func(instance, model_id)

        owner = f"deployment class {type(instance).__name__!r}"
        function.install(instance, RayModelMultiplexer(load, function.max_models_per_replica, owner))
