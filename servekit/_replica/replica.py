"""`Replica`: runs one instance of the user's class (or function) for any backend.

It builds the instance, calls methods the right way for their kind (async on the event loop;
sync inline on the loop when short, else on a worker thread, as `SyncCallPolicy` decides;
generators as async streams), sets the replica context, and turns user exceptions into ones
that name the deployment.

A sync call whose caller gives up (a timeout, a disconnect) cannot be interrupted: its thread
runs on as an *abandoned* call. `Replica.abandoned` counts them and `watch_abandoned` tells
when one returns, so admission (`ReplicaSet`) keeps their slots taken; a backend whose slot
lasts as long as the call itself (a worker process, a Ray actor) asks the replica to hold the
cancelled call until the thread returns instead (`hold_abandoned=True`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import enum
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, NoReturn

from servekit._replica.batching import (
    END,
    BatchedFunction,
    BatchQueue,
    batched_state,
    next_in_context,
    with_overrides,
)
from servekit._replica.context import ReplicaContext, enter_replica, exit_replica
from servekit._replica.errors import attribute_to_deployment
from servekit._replica.metrics import forget_replica
from servekit._replica.models import (
    BoundModel,
    ModelFollower,
    has_models,
    model_status,
    resolve_models,
    unpin,
)
from servekit._replica.multiplex import enter_call, exit_call, multiplexed_functions
from servekit._replica.request_context import current_request
from servekit._replica.sync_calls import SyncCallPolicy, blocking_waits, sync_mode
from servekit._spec.config import BatchOptions
from servekit._spec.endpoint import is_idempotent
from servekit._spec.graph import DeploymentNode
from servekit._telemetry import tracing
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
        self._methods: dict[str, tuple[Callable[..., Any], MethodKind, SyncCallPolicy]] = {}
        self.abandoned = 0
        """Sync calls whose caller gave up while their thread still runs."""
        self.abandoned_total = 0
        """Calls abandoned since the replica started."""
        self._abandoned_watchers: list[Callable[[], None]] = []
        self.models: list[BoundModel] = []
        """The model versions bound with `servekit.model(...)` that this replica serves now."""
        self._model_error: str | None = None
        self._followers: list[asyncio.Task[None]] = []

    @property
    def instance(self) -> Any:
        """The user's object (the function itself for function deployments)."""
        return self._instance

    def watch_abandoned(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever `abandoned` changes."""
        self._abandoned_watchers.append(callback)

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
        try:
            args, kwargs = await self._load_models(args, kwargs)
        except Exception as exc:
            raise DeploymentStartError(
                f"deployment {self.context.deployment!r}: replica {self.context.replica_id} "
                f"failed to start: {exc}"
            ) from exc
        token = enter_replica(self.context)
        try:
            context = contextvars.copy_context()
            future = self._pool().submit(context.run, self._target, *args, **kwargs)
            self._instance = await self._wait_thread(future)
        except Exception as exc:
            raise DeploymentStartError(
                f"deployment {self.context.deployment!r}: replica {self.context.replica_id} "
                f"failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            exit_replica(token)
        await self.configure_batching(self._batching)
        self._follow_models()

    async def _load_models(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Replace bound model references with local paths, and note the versions in the context."""
        if not has_models(args, kwargs):
            return args, kwargs
        pin = self.context.replica_id
        args, kwargs, self.models = await asyncio.to_thread(resolve_models, args, kwargs, pin)
        if self.models:
            self.context = dataclasses.replace(self.context, model_version=self.models[0].info.version)
        return args, kwargs

    def _follow_models(self) -> None:
        """With a `reconfigure_model(path)` method, follow each bound tag and swap in place."""
        if not callable(getattr(self._instance, "reconfigure_model", None)):
            return
        for bound in self.models:
            if bound.ref.follows_tag:
                pin = self.context.replica_id
                follower = ModelFollower(bound, self._reconfigure_model, self._on_model_swap, pin)
                self._followers.append(asyncio.get_running_loop().create_task(follower.run()))

    async def _reconfigure_model(self, path: str) -> None:
        await self.call("reconfigure_model", (path,), {})

    def _on_model_swap(self, bound: BoundModel | None, error: str | None) -> None:
        self._model_error = error
        if bound is None:
            return
        self.models = [bound if model.ref.target == bound.ref.target else model for model in self.models]
        self.context = dataclasses.replace(self.context, model_version=self.models[0].info.version)

    def model_status(self) -> dict[str, Any] | None:
        """For `/-/status`: the versions this replica serves, the last failed swap, and each
        `@multiplexed` method's models with their counters (None: no models at all)."""
        multiplexed = {
            name: multiplexer.status()
            for name, function in multiplexed_functions(self._target).items()
            if (multiplexer := function.existing(self._instance)) is not None
        }
        if not self.models and not multiplexed:
            return None
        return {**model_status(self.models, self._model_error), "multiplexed": multiplexed}

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

    async def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        hold_abandoned: bool = False,
        model_id: str | None = None,
    ) -> Any:
        """Call a unary method and return its result.

        With `hold_abandoned`, a sync call cancelled while its thread runs raises `CancelledError`
        only once the thread returns (for backends that count a request until its call returns).
        `model_id` is the multiplexed model the request names (`get_multiplexed_model_id()`).
        While tracing, a call that serves a request runs in a server span of its own.
        """
        active = tracing.active()
        if active is not None and active.recording() and current_request() is not None:
            with active.span(f"{self.context.deployment}.{method}", "server", self._span_attributes(method)):
                return await self._call(method, args, kwargs, hold_abandoned, model_id)
        return await self._call(method, args, kwargs, hold_abandoned, model_id)

    def _span_attributes(self, method: str) -> dict[str, str]:
        request = current_request()
        return {
            "servekit.deployment": self.context.deployment,
            "servekit.replica": self.context.replica_id,
            "servekit.method": method,
            "servekit.request_id": request.request_id if request is not None else "",
        }

    async def _call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        hold_abandoned: bool,
        model_id: str | None,
    ) -> Any:
        func, kind, policy = self._resolve(method)
        token = enter_replica(self.context)
        model_tokens = enter_call(model_id)
        try:
            if kind is MethodKind.ASYNC:
                return await func(*args, **kwargs)
            if kind is MethodKind.SYNC:
                if policy.inline:
                    return self._run_inline(method, func, policy, args, kwargs)
                return await self._run_in_thread(func, policy, args, kwargs, hold_abandoned)
            raise TypeError(f"method {method!r} is a generator; iterate over the call instead")
        except Exception as exc:
            _reraise_attributed(exc, self.context.deployment)
        finally:
            exit_call(model_tokens)
            exit_replica(token)

    def stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        hold_abandoned: bool = False,
        model_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """Call a generator method and yield its chunks (`hold_abandoned`, `model_id` as for `call`)."""
        chunks = self._stream(method, args, kwargs, hold_abandoned, model_id)
        active = tracing.active()
        if active is not None and active.recording() and current_request() is not None:
            name = f"{self.context.deployment}.{method}"
            chunks = active.traced_stream(chunks, name, "server", self._span_attributes(method))
        return chunks

    async def _stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        hold_abandoned: bool,
        model_id: str | None,
    ) -> AsyncIterator[Any]:
        func, kind, _ = self._resolve(method)
        if not kind.streaming:
            raise TypeError(f"method {method!r} is not a generator; await the call instead")
        chunks: AsyncIterator[Any] = (
            func(*args, **kwargs)
            if kind is MethodKind.ASYNC_GEN
            else self._sync_gen(func, args, kwargs, hold_abandoned)
        )
        try:
            while True:
                token = enter_replica(self.context)  # per step: each step may run in another task
                model_tokens = enter_call(model_id)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    _reraise_attributed(exc, self.context.deployment)
                finally:
                    exit_call(model_tokens)
                    exit_replica(token)
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def is_streaming(self, method: str) -> bool:
        """Whether `method` is a generator method."""
        return self._resolve(method)[1].streaming

    def batch_stats(self) -> dict[str, dict[str, Any]]:
        """Stats of each batched method's queue on this replica."""
        return {name: queue.status() for name, queue in self.batch_queues()}

    def batch_queues(self) -> list[tuple[str, BatchQueue]]:
        """Each batched method's queue on this replica (those made by a first call)."""
        found = []
        for name, state in self._batched_methods():
            queue = state.existing_queue(self._batch_owner(state))
            if queue is not None:
                found.append((name, queue))
        return found

    async def check_health(self) -> None:
        """Run the user's `check_health()` if defined; raises if the replica is unhealthy."""
        check = getattr(self._instance, "check_health", None)
        if check is not None and not self._is_function:
            await self.call("check_health", (), {})

    def stop(self) -> None:
        """Release the replica's batch queues and its user metrics' series; in-flight work must have
        drained already."""
        for follower in self._followers:
            follower.cancel()
        if self.models:
            unpin(self.models, self.context.replica_id)
        for _, state in self._batched_methods():
            state.discard(self._batch_owner(state))
        forget_replica(self.context.deployment, self.context.replica_id)

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

    def _resolve(self, method: str) -> tuple[Callable[..., Any], MethodKind, SyncCallPolicy]:
        cached = self._methods.get(method)
        if cached is None:
            declared = user_method(self._target, self._is_function, method)
            func = self._instance if self._is_function else getattr(self._instance, method)
            cached = (func, method_kind(func), SyncCallPolicy(sync_mode(declared, self._target)))
            self._methods[method] = cached
        return cached

    def _run_inline(
        self,
        method: str,
        func: Callable[..., Any],
        policy: SyncCallPolicy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run a short sync call right here on the event loop, in its own copy of the context."""
        waits = blocking_waits()
        started = time.perf_counter()
        try:
            return contextvars.copy_context().run(func, *args, **kwargs)
        except RuntimeError as exc:
            if blocking_waits() == waits:
                raise
            policy.pin_thread()
            raise RuntimeError(
                f"{method}() waited on a handle call (.result() or a 'for' loop over a stream) while "
                "it ran inline on the event loop, which cannot block; servekit runs it on a worker "
                "thread from now on. Mark it @servekit.threaded to never run it inline"
            ) from exc
        finally:
            ended = time.perf_counter()
            policy.record(ended - started, True, ended)
            if blocking_waits() != waits:  # it tried to wait, even if it caught the error itself
                policy.pin_thread()

    async def _run_in_thread(
        self,
        func: Callable[..., Any],
        policy: SyncCallPolicy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        hold_abandoned: bool,
    ) -> Any:
        context = contextvars.copy_context()
        future = self._pool().submit(_timed_call, context, func, args, kwargs)
        ok, value, duration, cpu, waited = await self._wait_thread(future, hold_abandoned)
        if waited:
            policy.pin_thread()
        policy.record(duration, False, time.perf_counter(), cpu)
        if not ok:
            raise value
        return value

    async def _wait_thread(self, future: concurrent.futures.Future[Any], hold_abandoned: bool = False) -> Any:
        """The thread's result; if the caller is cancelled meanwhile, the call becomes abandoned."""
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancel() or future.done():  # it had not started, or it just finished
                raise
            self._abandon(future)
            if hold_abandoned:
                await _until_done(future)
            raise

    def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        loop = asyncio.get_running_loop()
        self.abandoned += 1
        self.abandoned_total += 1
        self._notify_abandoned()
        future.add_done_callback(lambda _: _call_soon(loop, self._settle))

    def _settle(self) -> None:
        self.abandoned -= 1
        self._notify_abandoned()

    def _notify_abandoned(self) -> None:
        for watcher in self._abandoned_watchers:
            watcher()

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(thread_name_prefix="servekit-replica")
        return self._executor

    async def _sync_gen(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], hold_abandoned: bool
    ) -> AsyncIterator[Any]:
        pool = self._pool()
        context = contextvars.copy_context()
        generator = context.run(func, *args, **kwargs)
        step: concurrent.futures.Future[Any] | None = None
        try:
            while True:
                step = pool.submit(next_in_context, context, generator)
                chunk = await self._wait_thread(step, hold_abandoned)
                if chunk is END:
                    return
                yield chunk
        finally:
            if step is not None and not step.done():  # abandoned mid-step: close once it returns
                step.add_done_callback(lambda _: _submit_quietly(pool, context.run, generator.close))
            else:
                await asyncio.wrap_future(pool.submit(context.run, generator.close))


def _timed_call(
    context: contextvars.Context, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any, float, float, bool]:
    """Run `func` in `context` on a worker thread.

    Returns (ok, result or exception, wall seconds, CPU seconds, whether it waited on a handle).
    """
    waits = blocking_waits()
    cpu = time.thread_time()
    started = time.perf_counter()
    try:
        value = context.run(func, *args, **kwargs)
        ok = True
    except Exception as exc:
        value, ok = exc, False
    wall = time.perf_counter() - started
    return ok, value, wall, time.thread_time() - cpu, blocking_waits() != waits


def _submit_quietly(pool: Executor, func: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the pool is shut down: the app stopped meanwhile
        pool.submit(func, *args)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
        loop.call_soon_threadsafe(callback)


async def _until_done(future: concurrent.futures.Future[Any]) -> None:
    """Wait for a thread to return, through any further cancellation (the caller is gone already)."""
    waiting = asyncio.wrap_future(future)
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            continue
        except Exception:
            return


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
