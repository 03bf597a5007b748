"""`Replica`: runs one instance of the user's class (or function) for any backend.

It builds the instance, calls methods the right way for their kind (async on the event loop,
sync on a worker thread, generators as async streams), sets the replica context, and turns
user exceptions into ones that name the deployment.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any, NoReturn

from servekit._replica.batching import END, BatchedFunction, batched_state, next_in_context, with_overrides
from servekit._replica.context import ReplicaContext, enter_replica, exit_replica
from servekit._replica.errors import attribute_to_deployment
from servekit._spec.config import BatchOptions
from servekit._spec.endpoint import is_idempotent
from servekit._spec.graph import DeploymentNode
from servekit.errors import DeploymentOptionError, DeploymentStartError, NotFoundError


def _reraise_attributed(exc: Exception, deployment: str) -> NoReturn:
    attributed = attribute_to_deployment(exc, deployment)
    if attributed is exc:
        raise exc
    raise attributed from exc.__cause__


class MethodKind(enum.Enum):
    """How a user method must be called."""

    ASYNC = "async"
    SYNC = "sync"
    ASYNC_GEN = "async_gen"
    SYNC_GEN = "sync_gen"

    @property
    def streaming(self) -> bool:
        """Whether calls return a stream of chunks."""
        return self in (MethodKind.ASYNC_GEN, MethodKind.SYNC_GEN)


def method_kind(func: Callable[..., Any]) -> MethodKind:
    """Classify `func` (a function, bound method, or callable object)."""
    target = func if inspect.isroutine(func) else getattr(func, "__call__", func)  # noqa: B004
    if inspect.isasyncgenfunction(target):
        return MethodKind.ASYNC_GEN
    if inspect.isgeneratorfunction(target):
        return MethodKind.SYNC_GEN
    if inspect.iscoroutinefunction(target):
        return MethodKind.ASYNC
    return MethodKind.SYNC


def user_method(target: type | Callable[..., Any], is_function: bool, name: str) -> Callable[..., Any]:
    """The method `name` of a deployment target, for inspection (not bound to an instance)."""
    if is_function:
        if name != "__call__":
            raise NotFoundError(f"function deployment {target.__name__!r} has no method {name!r}")
        return target
    method = getattr(target, name, None)
    if method is None or (name.startswith("_") and name != "__call__") or not callable(method):
        raise NotFoundError(f"deployment class {target.__name__!r} has no public method {name!r}")
    return method  # type: ignore[no-any-return]


class Replica:
    """One running copy of a deployment's user code."""

    def __init__(
        self,
        context: ReplicaContext,
        target: type | Callable[..., Any],
        is_function: bool,
        executor: Executor | None = None,
        batching: Mapping[str, BatchOptions] | None = None,
    ) -> None:
        self.context = context
        self._target = target
        self._is_function = is_function
        self._executor = executor
        self._batching = dict(batching or {})
        self._instance: Any = None
        self._methods: dict[str, tuple[Callable[..., Any], MethodKind]] = {}

    @property
    def instance(self) -> Any:
        """The user's object (the function itself for function deployments)."""
        return self._instance

    async def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Construct the user's instance on a worker thread, so the event loop stays free.

        Raises `DeploymentOptionError` before running user code when the deployment's
        `batching` option names a method that is not batched.
        """
        self._batched_targets(self._batching)
        if self._is_function:
            self._instance = self._target
            await self.configure_batching(self._batching)
            return
        token = enter_replica(self.context)
        try:
            self._instance = await self._in_thread(self._target, *args, **kwargs)
        except Exception as exc:
            raise DeploymentStartError(
                f"deployment {self.context.deployment!r}: replica {self.context.replica_id} "
                f"failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            exit_replica(token)
        await self.configure_batching(self._batching)

    async def configure_batching(self, options: Mapping[str, BatchOptions]) -> None:
        """Run each batched method with the decorator's options overridden by `options[method]`.

        Applies at once to waiting items and later batches; a method left out goes back to the
        decorator's options. Raises `DeploymentOptionError`, changing nothing, when `options`
        names a method that does not exist or is not batched.
        """
        targets = self._batched_targets(options)
        self._batching = dict(options)
        for name, state in targets.items():
            limits = state.limits if name not in options else with_overrides(state.limits, options[name])
            state.configure(self._batch_owner(state), limits)

    def _batched_targets(self, options: Mapping[str, BatchOptions]) -> dict[str, BatchedFunction]:
        """Each batched method by name; raises if `options` names another one."""
        targets = dict(self._batched_methods())
        unknown = sorted(set(options) - set(targets))
        if unknown:
            raise DeploymentOptionError(
                f"deployment {self.context.deployment!r}: option batching names "
                f"{', '.join(map(repr, unknown))}, which {'is' if len(unknown) == 1 else 'are'} not a "
                f"@batch method; batched methods: {sorted(targets) or 'none'}"
            )
        return targets

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call a unary method and return its result."""
        func, kind = self._resolve(method)
        token = enter_replica(self.context)
        try:
            if kind is MethodKind.ASYNC:
                return await func(*args, **kwargs)
            if kind is MethodKind.SYNC:
                return await self._in_thread(func, *args, **kwargs)
            raise TypeError(f"method {method!r} is a generator; iterate over the call instead")
        except Exception as exc:
            _reraise_attributed(exc, self.context.deployment)
        finally:
            exit_replica(token)

    async def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Call a generator method and yield its chunks."""
        func, kind = self._resolve(method)
        if not kind.streaming:
            raise TypeError(f"method {method!r} is not a generator; await the call instead")
        chunks: AsyncIterator[Any] = (
            func(*args, **kwargs) if kind is MethodKind.ASYNC_GEN else self._sync_gen(func, args, kwargs)
        )
        try:
            while True:
                token = enter_replica(self.context)  # per step: each step may run in another task
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    _reraise_attributed(exc, self.context.deployment)
                finally:
                    exit_replica(token)
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def is_streaming(self, method: str) -> bool:
        """Whether `method` is a generator method."""
        return self._resolve(method)[1].streaming

    def batch_stats(self) -> dict[str, dict[str, Any]]:
        """Stats of each batched method's queue on this replica."""
        stats = {}
        for name, state in self._batched_methods():
            queue = state.existing_queue(self._batch_owner(state))
            if queue is not None:
                stats[name] = queue.status()
        return stats

    async def check_health(self) -> None:
        """Run the user's `check_health()` if defined; raises if the replica is unhealthy."""
        check = getattr(self._instance, "check_health", None)
        if check is not None and not self._is_function:
            await self.call("check_health", (), {})

    def stop(self) -> None:
        """Release the replica's batch queues; in-flight work must have drained already."""
        for _, state in self._batched_methods():
            state.discard(self._batch_owner(state))

    def _batch_owner(self, state: BatchedFunction) -> Any:
        return self._instance if state.is_method else self.context

    def _batched_methods(self) -> Iterator[tuple[str, BatchedFunction]]:
        cls = self._target if isinstance(self._target, type) else type(self._instance)
        names = ["__call__"] if self._is_function else dir(cls)
        for name in names:
            attr = self._target if self._is_function else getattr(cls, name, None)
            state = batched_state(attr)
            if state is not None:
                yield name, state

    def _resolve(self, method: str) -> tuple[Callable[..., Any], MethodKind]:
        cached = self._methods.get(method)
        if cached is None:
            user_method(self._target, self._is_function, method)
            func = self._instance if self._is_function else getattr(self._instance, method)
            cached = (func, method_kind(func))
            self._methods[method] = cached
        return cached

    async def _in_thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = functools.partial(context.run, func, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    async def _sync_gen(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        generator = context.run(func, *args, **kwargs)
        try:
            while True:
                chunk = await loop.run_in_executor(self._executor, next_in_context, context, generator)
                if chunk is END:
                    return
                yield chunk
        finally:
            await loop.run_in_executor(self._executor, context.run, generator.close)


def method_table(nodes: Mapping[str, DeploymentNode]) -> dict[str, dict[str, bool]]:
    """For each deployment: its public methods and whether each is a generator (for remote handles)."""
    table: dict[str, dict[str, bool]] = {}
    for name, node in nodes.items():
        deployment = node.deployment
        target = deployment.target
        if deployment.is_function:
            table[name] = {"__call__": method_kind(target).streaming}
            continue
        methods: dict[str, bool] = {}
        for attr in dir(target):
            if attr.startswith("_") and attr != "__call__":
                continue
            value = getattr(target, attr, None)
            if callable(value) and not isinstance(value, type):
                if attr == "__call__" and value is getattr(object, "__call__", None):  # noqa: B004
                    continue
                methods[attr] = method_kind(value).streaming
        table[name] = methods
    return table


def idempotent_methods(nodes: Mapping[str, DeploymentNode]) -> dict[str, frozenset[str]]:
    """For each deployment: the methods marked `@idempotent` (safe to retry on another replica)."""
    table: dict[str, frozenset[str]] = {}
    for name, methods in method_table(nodes).items():
        deployment = nodes[name].deployment
        table[name] = frozenset(
            method
            for method in methods
            if is_idempotent(user_method(deployment.target, deployment.is_function, method))
        )
    return table
