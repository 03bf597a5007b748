"""Multiplexing: many models per deployment, loaded on demand, least recently used evicted.

In: `@servekit.multiplexed(max_models_per_replica=N)` on an async `load(model_id)` method, and
the model id each request carries (HTTP header ``serve-multiplexed-model-id`` or
`handle.options(multiplexed_model_id=...)`). Out: the loaded model for the request's id (one
load per id at a time on a replica; later callers wait for it), per-model hit, miss, load
time and eviction counts, and `choose_replica`, the pure routing decision that sends a
request to a replica already holding its model.

The model id travels in two context variables: `outgoing` (set by a handle's option for the
call it makes; the runtime reads it to route and forwards it) and `incoming` (set by the
replica for the user code serving the request; `get_multiplexed_model_id()` reads it).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from servekit.errors import DeploymentOptionError, ModelLoadError

MODEL_ID_HEADER = "serve-multiplexed-model-id"
"""The HTTP header naming the request's model (the name Ray Serve uses)."""

_incoming: ContextVar[str | None] = ContextVar("servekit_model_id", default=None)
_outgoing: ContextVar[str | None] = ContextVar("servekit_outgoing_model_id", default=None)


def get_multiplexed_model_id() -> str:
    """The model id of the request being served (``""`` when the request names none)."""
    return _incoming.get() or ""


def outgoing_model_id() -> str | None:
    """The model id the handle call being dispatched carries, if any."""
    return _outgoing.get()


def route_by_model_id(model_id: str | None) -> None:
    """In the current task's context: dispatch handle calls carrying `model_id` (for relayed calls)."""
    _outgoing.set(model_id)


def enter_call(model_id: str | None) -> tuple[Token[str | None], Token[str | None]]:
    """For a replica serving a request: its model id becomes current, and outgoing calls carry none."""
    return _incoming.set(model_id), _outgoing.set(None)


def exit_call(tokens: tuple[Token[str | None], Token[str | None]]) -> None:
    """Undo `enter_call`."""
    _incoming.reset(tokens[0])
    _outgoing.reset(tokens[1])


async def carrying_model_id(model_id: str, call: Awaitable[Any]) -> Any:
    """Await `call` (a runtime dispatch) with `model_id` as the model id it routes by and forwards."""
    token = _outgoing.set(model_id)
    try:
        return await call
    finally:
        _outgoing.reset(token)


@dataclass
class ModelStats:
    """One model id's counters on one replica."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_s: float = 0.0
    evictions: int = 0
    failures: int = 0


class ModelMultiplexer:
    """The models one replica holds for one `@multiplexed` method: an LRU of at most `max_models`."""

    def __init__(
        self, load: Callable[[str], Awaitable[Any]], max_models: int, owner: str = "deployment"
    ) -> None:
        self._load = load
        self.max_models = max_models
        self._owner = owner
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self.stats: dict[str, ModelStats] = {}

    @property
    def loaded(self) -> list[str]:
        """The ids held, least recently used first."""
        return list(self._models)

    async def get(self, model_id: str) -> Any:
        """The model for `model_id`, loading it on a miss (one load per id at a time)."""
        if not model_id:
            raise ModelLoadError(
                f"{self._owner}: the request names no model; send the header {MODEL_ID_HEADER} "
                "or call handle.options(multiplexed_model_id=...)"
            )
        stats = self.stats.setdefault(model_id, ModelStats())
        if model_id in self._models:
            stats.hits += 1
            self._models.move_to_end(model_id)
            return self._models[model_id]
        pending = self._loading.get(model_id)
        if pending is not None:  # another request is loading it: wait for that load
            stats.hits += 1
            return await asyncio.shield(pending)
        stats.misses += 1
        return await self._load_new(model_id, stats)

    async def _load_new(self, model_id: str, stats: ModelStats) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[model_id] = future
        started = time.perf_counter()
        try:
            model = await self._load(model_id)
        except Exception as exc:
            stats.failures += 1
            error = ModelLoadError(
                f"{self._owner}: model id {model_id!r} failed to load: {type(exc).__name__}: {exc}; "
                "other models keep serving; check the id or its files"
            )
            future.set_exception(error)
            future.exception()  # retrieved: waiters (if any) get it too
            raise error from exc
        finally:
            del self._loading[model_id]
        stats.loads += 1
        stats.load_s += time.perf_counter() - started
        while len(self._models) >= self.max_models:
            evicted, _ = self._models.popitem(last=False)
            self.stats.setdefault(evicted, ModelStats()).evictions += 1
        self._models[model_id] = model
        future.set_result(model)
        return model

    def status(self) -> dict[str, Any]:
        """JSON-ready: the ids held and each id's counters."""
        return {
            "max_models_per_replica": self.max_models,
            "loaded": self.loaded,
            "models": {
                model_id: {
                    "hits": stats.hits,
                    "misses": stats.misses,
                    "loads": stats.loads,
                    "load_s": round(stats.load_s, 6),
                    "evictions": stats.evictions,
                    "failures": stats.failures,
                }
                for model_id, stats in self.stats.items()
            },
        }


class MultiplexedFunction:
    """An async `load(model_id)` method made a per-replica LRU of models by `@multiplexed`.

    On an instance it is an async callable: `await self.load(model_id)` (or `await
    self.load()` for the request's own id) returns the model, loading it on a miss.
    """

    def __init__(self, func: Callable[..., Awaitable[Any]], max_models_per_replica: int) -> None:
        self.func = func
        self.max_models_per_replica = max_models_per_replica
        self.__name__ = getattr(func, "__name__", "load")
        self.__doc__ = func.__doc__
        self._per_instance: weakref.WeakKeyDictionary[Any, ModelMultiplexer] = weakref.WeakKeyDictionary()

    def multiplexer(self, instance: Any) -> ModelMultiplexer:
        """`instance`'s multiplexer (made on first use)."""
        found = self._per_instance.get(instance)
        if found is None:

            async def load(model_id: str) -> Any:
                return await self.func(instance, model_id)

            owner = f"deployment class {type(instance).__name__!r}"
            found = ModelMultiplexer(load, self.max_models_per_replica, owner)
            self._per_instance[instance] = found
        return found

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to a worker process without the models held here."""
        return {"func": self.func, "max_models_per_replica": self.max_models_per_replica}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["func"], state["max_models_per_replica"])  # type: ignore[misc]

    def install(self, instance: Any, multiplexer: ModelMultiplexer) -> None:
        """Serve `instance`'s models with `multiplexer` (a backend's own, like Ray Serve's)."""
        self._per_instance[instance] = multiplexer

    def existing(self, instance: Any) -> ModelMultiplexer | None:
        """`instance`'s multiplexer if it was used."""
        return self._per_instance.get(instance)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self

        async def get_model(model_id: str | None = None) -> Any:
            return await self.multiplexer(instance).get(model_id or get_multiplexed_model_id())

        return get_model


def multiplexed(func: Callable[..., Awaitable[Any]] | None = None, *, max_models_per_replica: int = 3) -> Any:
    """Make an async `load(self, model_id)` method a per-replica cache of up to N models.

    ```python
    @servekit.deployment(num_replicas=2)
    class Adapters:
        @servekit.multiplexed(max_models_per_replica=4)
        async def load(self, model_id: str) -> Model: ...

        async def __call__(self, x: str) -> str:
            model = await self.load(servekit.get_multiplexed_model_id())
            return model(x)
    ```

    A miss loads the model (one load per id at a time on a replica; concurrent requests for
    it wait), evicting the least recently used one when full. Requests go preferably to a
    replica that holds their model. A load that raises fails that request only, with
    `ModelLoadError` (503) naming the id.
    """
    if max_models_per_replica < 1:
        raise DeploymentOptionError(
            f"@multiplexed: max_models_per_replica must be >= 1, got {max_models_per_replica!r}"
        )

    def decorate(target: Callable[..., Awaitable[Any]]) -> MultiplexedFunction:
        if not asyncio.iscoroutinefunction(target):
            raise DeploymentOptionError(
                f"@multiplexed applies to an async method like 'async def load(self, model_id)', "
                f"got {getattr(target, '__name__', target)!r}"
            )
        return MultiplexedFunction(target, max_models_per_replica)

    return decorate if func is None else decorate(func)


def multiplexed_functions(target: Any) -> dict[str, MultiplexedFunction]:
    """The `@multiplexed` methods of a deployment class, by name."""
    if not isinstance(target, type):
        return {}
    found = {}
    for name in dir(target):
        attr = getattr(target, name, None)
        if isinstance(attr, MultiplexedFunction):
            found[name] = attr
    return found


def max_models_per_replica(target: Any) -> int | None:
    """The smallest `max_models_per_replica` of the class's `@multiplexed` methods (None: none)."""
    functions = multiplexed_functions(target)
    return min((f.max_models_per_replica for f in functions.values()), default=None)


def choose_replica(
    loads: Sequence[int], holds: Sequence[bool], counts: Sequence[int], max_ongoing: int
) -> int | None:
    """The replica for a request naming a model: index into the sequences, or None if all are full.

    Among replicas with room: the least loaded one holding the model; else the one holding the
    fewest models (then the least loaded), which loads it.
    """
    room = [index for index, load in enumerate(loads) if load < max_ongoing]
    if not room:
        return None
    holding = [index for index in room if holds[index]]
    if holding:
        return min(holding, key=lambda index: loads[index])
    return min(room, key=lambda index: (counts[index], loads[index]))
