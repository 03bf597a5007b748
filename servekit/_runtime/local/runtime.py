"""`LocalRuntime`: runs an app graph's replicas on one machine, in-process or in worker processes.

Implements the runtime interface (`start`, `handle`, `scale`, `update`, `status`, `shutdown`)
and the `Dispatcher` that handles call through. A `Controller` task keeps each deployment at
its target: it replaces dead and unhealthy replicas, retries failed starts with backoff, and
applies autoscaling decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from prometheus_client.core import Metric

from servekit._replica import metrics as user_metrics
from servekit._replica.autoscaling import Autoscaler
from servekit._replica.batch_metrics import batch_families
from servekit._replica.deadline import chunks_within_timeout, within_timeout
from servekit._replica.multiplex import max_models_per_replica, outgoing_model_id
from servekit._replica.replica import method_kind, method_table, user_method
from servekit._runtime.fingerprint import fingerprint
from servekit._runtime.gpus import GpuInventory, detect_gpus
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.local.controller import Controller
from servekit._runtime.local.deployment_state import DeploymentState
from servekit._runtime.local.placement import ResourcePlanner, packing_order
from servekit._runtime.local.replicas import ReplicaLauncher
from servekit._runtime.local.workers.process_replica import ProcessReplica
from servekit._runtime.replica_set import ReplicaSet, ReplicaSlot
from servekit._runtime.routing import AppRouters, routed_method_table
from servekit._spec.config import Isolation, Resources
from servekit._spec.graph import AppGraph, DeploymentNode
from servekit._telemetry.logs import LogFormat
from servekit._telemetry.metrics import call_families, merge_families
from servekit._telemetry.tracing import Tracing, TracingSettings, start_tracing
from servekit.errors import (
    DeploymentOptionError,
    DeploymentStartError,
    DeploymentUnavailableError,
    InsufficientResourcesError,
    NotFoundError,
    ReplicaDiedError,
)

logger = logging.getLogger("servekit.runtime")

IN_PLACE = ("batching",)
"""Options a redeploy applies to running replicas, without restarting them."""


class LocalRuntime:
    """Hosts every replica of an app on this machine.

    In-process replicas run async methods on the runtime's loop and sync ones on threads;
    process replicas (`isolation="process"`) run in worker processes with their own devices.
    """

    def __init__(
        self,
        graph: AppGraph,
        max_threads: int | None = None,
        *,
        isolation: Isolation | None = None,
        gpus: str | None = None,
        in_process_only: Collection[str] = (),
        start_timeout_s: float | None = None,
        tracing: TracingSettings | None = None,
        log_format: LogFormat | None = None,
    ) -> None:
        self._graph = graph
        self._tracing_settings = tracing
        self._tracing: Tracing | None = None
        self._start_timeout_s = start_timeout_s
        self._states: dict[str, DeploymentState] = {}
        self._default_isolation = isolation
        self._in_process_only = set(in_process_only)
        self._declared_gpus = gpus
        self._launcher = ReplicaLauncher(self, max_threads, tracing, log_format)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._controller = Controller(self)
        self._stopping: set[asyncio.Task[None]] = set()
        self._last_rollout: dict[str, Any] | None = None
        self.routers = AppRouters(self.call, self.stream, self._has_replica)
        """The app's traffic-split routers: their state lives here, handles route through them."""
        self.routers.load(graph)
        self.state = "new"

    @property
    def graph(self) -> AppGraph:
        """The app graph this runtime serves."""
        return self._graph

    @property
    def location(self) -> str:
        """Where the app runs."""
        return "on this machine"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the replicas run on (set by `start`)."""
        if self._loop is None:
            raise RuntimeError("the runtime has not been started")
        return self._loop

    @property
    def ready(self) -> bool:
        """Whether every deployment runs its target number of replicas."""
        return self.state == "running" and all(
            state.running >= state.target or state.autoscaler is not None for state in self._states.values()
        )

    async def is_ready(self) -> bool:
        """`ready`, for the HTTP edge's `/readyz`."""
        return self.ready

    @property
    def states(self) -> dict[str, DeploymentState]:
        """Each deployment's state (for the controller and tests)."""
        return self._states

    @property
    def planner(self) -> ResourcePlanner:
        """The GPU and CPU planner (set by `start`)."""
        return self._launcher.require_planner()

    async def start(self) -> None:
        """Plan resources, start every deployment (dependencies first) and the controller.

        Raises `DeploymentStartError` (or its `InsufficientResourcesError`) before serving
        anything when a deployment cannot fit or fails to start.
        """
        self._loop = asyncio.get_running_loop()
        self.state = "starting"
        if self._tracing_settings is not None:  # this process's spans: the edge's, handles', replicas'
            self._tracing = start_tracing(self._tracing_settings)
        demands = {
            name: (node.deployment.config.start_replicas, node.deployment.config.resources)
            for name, node in self._graph.nodes.items()
        }
        inventory = GpuInventory((), "none")
        if self._declared_gpus is not None or any(resources.gpus > 0 for _, resources in demands.values()):
            inventory = await asyncio.to_thread(detect_gpus, self._declared_gpus)
        planner = self._launcher.planner = ResourcePlanner(inventory)
        planner.check(demands)
        _log_cluster_only_resources(demands)
        for name in packing_order(demands):  # place the first replicas the way check() packed them
            count, resources = demands[name]
            for index in range(count):
                process = self.isolation_of(self._graph.nodes[name]) == "process"
                pin = process and "cpus" in resources.model_fields_set
                planner.allocate(f"{name}#{index}", resources, pin_cpus=pin)
        self._launcher.methods = self._methods(self._graph)
        deadline = asyncio.timeout(self._start_timeout_s)
        try:
            async with deadline:
                for node in self._graph.nodes.values():
                    await self._start_deployment(node)
        except BaseException as exc:
            await self.shutdown(grace_s=0)
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise DeploymentStartError(
                    f"the app did not start within start_timeout_s={self._start_timeout_s:g}"
                ) from None
            raise
        self.state = "running"
        self._controller.start()
        self.routers.start()

    def handle(self, deployment: str | None = None) -> DeploymentHandle:
        """A handle to `deployment` (the ingress by default)."""
        name = deployment or self._graph.ingress
        if name not in self._graph.nodes and name not in self._states and name not in self.routers.routers:
            raise NotFoundError(f"no deployment named {name!r}; deployments: {sorted(self._graph.nodes)}")
        return DeploymentHandle(self, name)

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method on one replica (of one arm, for a router), within the request timeout."""
        router = self.routers.routers.get(deployment)
        if router is not None:  # the router calls back here for the arm it chose
            return await router.call(method, args, kwargs)
        state = self._state(deployment)
        timeout = state.node.deployment.config.request_timeout_s
        started = time.perf_counter()
        ok = False
        try:
            result = await within_timeout(
                self._call_replica(state, method, args, kwargs), timeout, deployment, method
            )
            ok = True
            return result
        except asyncio.CancelledError:
            ok = True  # the caller left: not the deployment's failure
            raise
        finally:
            ended = time.perf_counter()
            state.latencies.add(ended, (ended - started) * 1000)
            state.calls.record(method, ended - started, ok)

    async def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method on one replica and yield its chunks, each within the request timeout."""
        router = self.routers.routers.get(deployment)
        if router is not None:  # the router streams from the arm it chose, through here
            async with contextlib.aclosing(router.stream(method, args, kwargs)) as routed:  # type: ignore[type-var]
                async for chunk in routed:
                    yield chunk
            return
        state = self._state(deployment)
        timeout = state.node.deployment.config.request_timeout_s
        chunks = self._stream_replica(state, method, args, kwargs)
        started = time.perf_counter()
        ok = False
        try:
            async with contextlib.aclosing(
                chunks_within_timeout(chunks, timeout, deployment, method)
            ) as timed:
                async for chunk in timed:
                    yield chunk
            ok = True
        except (GeneratorExit, asyncio.CancelledError):
            ok = True  # the caller stopped reading: not the deployment's failure
            raise
        finally:
            state.calls.record(method, time.perf_counter() - started, ok)

    @staticmethod
    async def _stream_replica(
        state: DeploymentState, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        replica_set = state.replicas
        model_id = outgoing_model_id()
        slot = await replica_set.acquire(model_id)
        try:
            async for chunk in slot.replica.stream(method, args, kwargs, model_id=model_id):
                yield chunk
        finally:
            replica_set.release(slot)

    @contextlib.asynccontextmanager
    async def replica(self, deployment: str) -> AsyncIterator[Any]:
        """Hold a replica of `deployment` (with admission control) for custom work, like ASGI apps."""
        replica_set = self._state(deployment).replicas
        slot = await replica_set.acquire()
        try:
            yield slot.replica
        finally:
            replica_set.release(slot)

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` is a generator method; raises `NotFoundError` if it does not exist."""
        router = self.routers.routers.get(deployment)
        if router is not None:
            deployment = next(iter(router.node.arms.values()))
        node = self._node(deployment)
        func = user_method(node.deployment.target, node.deployment.is_function, method)
        return method_kind(func).streaming

    def isolation_of(self, node: DeploymentNode) -> Isolation:
        """Where `node`'s replicas run: its own option, else the runtime default."""
        config = node.deployment.config
        if node.name in self._in_process_only:
            if "isolation" in config.model_fields_set and config.isolation == "process":
                raise DeploymentStartError(
                    f"deployment {node.name!r} is an ingress that needs its instance in the server "
                    "(an @ingress ASGI app or a raw __call__(request)); it cannot use isolation='process'"
                )
            return "in_process"
        if "isolation" in config.model_fields_set or self._default_isolation is None:
            return config.isolation
        return self._default_isolation

    async def scale(self, deployment: str, replicas: int) -> None:
        """Run `replicas` replicas of `deployment`: start new ones, or drain and stop extra ones."""
        state = self._state(deployment)
        state.target = replicas
        await self.reconcile(state, raise_errors=True)

    async def reconcile(self, state: DeploymentState, raise_errors: bool = False) -> None:
        """Start or retire replicas until `state` runs its target (the controller calls this)."""
        async with state.lock:
            missing = state.target - state.running
            if missing > 0:
                await self._add_replicas(state, missing, raise_errors=raise_errors)
            elif missing < 0:
                grace = state.node.deployment.config.graceful_shutdown_timeout_s
                extra = sorted(state.replicas.slots, key=lambda slot: slot.ongoing)[:-missing]
                await asyncio.gather(*(self.retire(state, slot, grace) for slot in extra))

    async def retire(self, state: DeploymentState, slot: ReplicaSlot, grace_s: float) -> None:
        """Stop routing to `slot`, drain it for up to `grace_s`, then stop its replica."""
        replica = await state.replicas.retire(slot, grace_s)
        await self._launcher.stop(replica)

    async def update(self, graph: AppGraph) -> None:
        """Redeploy: roll changed deployments one replica at a time, start new ones, stop removed ones.

        Each changed deployment gets a new replica that is ready before an old one drains, so
        requests keep being served throughout. All or nothing: when a replica of the new app
        cannot start, deployments already rolled roll back, new ones stop, and the app runs and
        reports exactly the old version; `DeploymentStartError` says what failed.
        """
        undo: list[Callable[[], Awaitable[None]]] = []
        old_methods = self._launcher.methods
        merged = AppGraph(
            graph.ingress, {**self._graph.nodes, **graph.nodes}, {**self._graph.routers, **graph.routers}
        )
        self._launcher.methods = self._methods(merged)
        try:
            for name, node in graph.nodes.items():
                state = self._states.get(name)
                if state is None:
                    self._planner_check({name: node})
                    await self._start_deployment(node)
                    undo.append(functools.partial(self._remove_deployment, name))
                elif state.fingerprint != fingerprint(node, ignore=IN_PLACE):
                    previous = state.node
                    await self._roll(state, node)
                    undo.append(functools.partial(self._roll, state, previous))
                elif state.node.deployment.config.batching != node.deployment.config.batching:
                    previous = state.node
                    await self._configure_batching(state, node)
                    undo.append(functools.partial(self._configure_batching, state, previous))
        except BaseException as exc:
            await self._undo(undo)
            self._launcher.methods = old_methods
            self._last_rollout = {"state": "failed", "error": str(exc), "at": time.time()}
            if isinstance(exc, Exception) and not isinstance(exc, DeploymentOptionError):
                raise DeploymentStartError(f"the redeploy failed and was rolled back: {exc}") from exc
            raise  # a bad option keeps its type: the app is as it was all the same
        self._graph = graph
        self._launcher.methods = self._methods(graph)
        self.routers.load(graph)
        self._last_rollout = {"state": "done", "error": None, "at": time.time()}
        for name in [name for name in self._states if name not in graph.nodes]:
            await self._remove_deployment(name)

    async def _undo(self, steps: list[Callable[[], Awaitable[None]]]) -> None:
        for step in reversed(steps):
            try:
                await step()
            except Exception:
                logger.exception("rolling back a failed redeploy")

    async def _remove_deployment(self, name: str) -> None:
        state = self._states.pop(name)
        grace = state.node.deployment.config.graceful_shutdown_timeout_s
        for replica in await state.replicas.close(grace):
            await self._launcher.stop(replica)

    def status(self) -> dict[str, Any]:
        """JSON-ready state of the app and each deployment's replicas."""
        deployments = {}
        for name in self._graph.nodes:
            state = self._states.get(name)
            if state is None:
                deployments[name] = {"replicas": [], "running_replicas": 0, "ongoing": 0, "queued": 0}
            else:
                deployments[name] = state.status()
        planner = self._launcher.planner
        return {
            "state": self.state,
            "ready": self.ready,
            "ingress": self._graph.ingress,
            "gpus": planner.usage() if planner is not None else {},
            "last_rollout": self._last_rollout,
            "deployments": deployments,
            "routers": {name: self.routers.view(name) for name in self.routers.router_names()},
        }

    def metric_families(self) -> list[Metric]:
        """What `/metrics` shows beyond `status()`: each method's calls, and the batch queues and
        user metrics of every replica, worker processes' as of their last probe (`refresh_stats`)."""
        calls = call_families({name: state.calls for name, state in self._states.items()})
        replicas = [
            slot.replica.metric_families()
            if isinstance(slot.replica, ProcessReplica)
            else batch_families(slot.replica)
            for state in self._states.values()
            for slot in state.replicas.slots
        ]
        return merge_families(calls, *replicas, user_metrics.collect())

    async def refresh_stats(self, timeout_s: float = 1.0) -> None:
        """Fetch fresh batch stats and user metrics from process replicas (in-process ones are
        always current)."""
        probes = [
            slot.replica.probe(health=False)
            for state in self._states.values()
            for slot in state.replicas.slots
            if isinstance(slot.replica, ProcessReplica)
        ]
        if probes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*probes, return_exceptions=True), timeout_s)

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let running ones finish (up to each deployment's grace), stop all."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        self.routers.close()
        await self._controller.stop()
        closing = []
        for state in self._states.values():
            grace = grace_s
            if grace is None:
                grace = state.node.deployment.config.graceful_shutdown_timeout_s
            closing.append(state.replicas.close(grace))
        stops = [
            self._launcher.stop(replica)
            for replicas in await asyncio.gather(*closing)
            for replica in replicas
        ]
        await asyncio.gather(*stops, *self._stopping, return_exceptions=True)
        await self._launcher.close()
        if self._tracing is not None:  # export what is buffered (the workers flushed as they exited)
            await asyncio.to_thread(self._tracing.shutdown)
        self.state = "stopped"

    # -- replicas -------------------------------------------------------------------------------
    async def _start_deployment(self, node: DeploymentNode) -> None:
        config = node.deployment.config
        autoscaling = config.autoscaling
        replicas = ReplicaSet(node.name, config.max_ongoing_requests, config.max_queued_requests)
        replicas.max_models = max_models_per_replica(node.deployment.target)
        state = DeploymentState(
            node=node,
            replicas=replicas,
            target=config.start_replicas,
            isolation=self.isolation_of(node),
            fingerprint=fingerprint(node, ignore=IN_PLACE),
            autoscaler=None
            if autoscaling is None
            else Autoscaler(autoscaling, time.monotonic(), max_ongoing_requests=config.max_ongoing_requests),
        )
        self._states[node.name] = state
        try:
            await self.reconcile(state, raise_errors=True)
        except BaseException:
            if self.state == "running":  # a redeploy's new deployment: leave no trace of it
                await self._remove_deployment(node.name)
            raise

    async def _add_replicas(self, state: DeploymentState, count: int, raise_errors: bool) -> None:
        state.starting += count
        try:
            results = await asyncio.gather(
                *(self._start_replica(state, state.node) for _ in range(count)), return_exceptions=True
            )
        finally:
            state.starting -= count
        errors = [result for result in results if isinstance(result, BaseException)]
        for result in results:
            if not isinstance(result, BaseException):
                state.replicas.add(result, time.monotonic(), state.node)
        if not errors:
            state.start_failures = 0
            return
        state.start_failures += 1
        state.next_start_at = time.monotonic() + state.backoff_s()
        first = errors[0]
        state.last_error = str(first)
        for error in errors:
            logger.error("%s", error, exc_info=error if not isinstance(error, DeploymentStartError) else None)
        if state.running == 0 and not raise_errors:
            state.replicas.fail_waiting(
                DeploymentUnavailableError(
                    f"deployment {state.name!r} has no running replica; the last start failed "
                    f"(retrying in {state.backoff_s():g} s): {first}"
                )
            )
        if raise_errors:
            if isinstance(first, DeploymentStartError):
                raise first
            raise DeploymentStartError(f"deployment {state.name!r} failed to start: {first}") from first

    async def _start_replica(self, state: DeploymentState, node: DeploymentNode) -> Any:
        return await self._launcher.start(
            node,
            self.isolation_of(node),
            self.handle,
            lambda dead, reason: self._on_replica_death(state, dead, reason),
        )

    def _on_replica_death(self, state: DeploymentState, replica: ProcessReplica, reason: str) -> None:
        for slot in state.replicas.slots:
            if slot.replica is replica:
                state.replicas.remove(slot)
                if self.state == "running":
                    logger.error(
                        "deployment %r: replica %s (pid %s) %s; starting a replacement",
                        state.name,
                        replica.context.replica_id,
                        replica.pid,
                        reason,
                    )
                    state.restarts += 1
                    state.last_error = f"replica {replica.context.replica_id} {reason}"
                break
        task = asyncio.get_running_loop().create_task(self._launcher.stop(replica))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        self._controller.wake()

    async def _roll(self, state: DeploymentState, node: DeploymentNode) -> None:
        """Replace `state`'s replicas with `node`'s, one by one: start a new one, then drain an old one.

        Nothing changes until the first new replica runs. If a later one cannot start, the new
        replicas are replaced by old-version ones again and the deployment is as it was.
        """
        state.updating = True
        try:
            async with state.lock:
                first = await self._start_replica(state, node)  # raises with nothing changed
                previous = state.switch_to(
                    node, self.isolation_of(node), fingerprint(node, ignore=IN_PLACE), time.monotonic()
                )
                try:
                    await self._replace_replicas(state, node, first)
                except BaseException:
                    state.switch_to(
                        previous,
                        self.isolation_of(previous),
                        fingerprint(previous, ignore=IN_PLACE),
                        time.monotonic(),
                    )
                    await self._replace_replicas(state, previous, None, only_version=node)
                    raise
        finally:
            state.updating = False

    async def _replace_replicas(
        self,
        state: DeploymentState,
        node: DeploymentNode,
        first: Any,
        only_version: DeploymentNode | None = None,
    ) -> None:
        """Swap each replica not built from `node` for one that is, then meet the target."""
        grace = node.deployment.config.graceful_shutdown_timeout_s
        stale = [slot for slot in state.replicas.slots if slot.node is not node]
        if only_version is not None:
            stale = [slot for slot in stale if slot.node is only_version]
        for slot in stale:
            new, first = first, None
            state.starting += 1
            try:
                if new is None:
                    new = await self._start_replica(state, node)
            except InsufficientResourcesError:  # no GPU room for a surge replica: swap in place
                await self.retire(state, slot, grace)
                new = await self._start_replica(state, node)
            finally:
                state.starting -= 1
            state.replicas.add(new, time.monotonic(), node)
            if slot in state.replicas.slots:
                await self.retire(state, slot, grace)
        if first is not None:  # nothing to replace (no replica ran): keep it
            state.replicas.add(first, time.monotonic(), node)
        missing = state.target - state.running
        if missing > 0:
            await self._add_replicas(state, missing, raise_errors=True)

    async def _configure_batching(self, state: DeploymentState, node: DeploymentNode) -> None:
        """Apply `node`'s batch options to `state`'s running replicas in place (nothing else changed)."""
        async with state.lock:
            batching = node.deployment.config.batching
            for slot in state.replicas.slots:
                await slot.replica.configure_batching(batching)
            state.node = node

    def _planner_check(self, nodes: dict[str, DeploymentNode]) -> None:
        """Prove `nodes` fit beside what runs, before starting any of them."""
        self.planner.check(
            {
                name: (node.deployment.config.start_replicas, node.deployment.config.resources)
                for name, node in nodes.items()
            }
        )

    @staticmethod
    def _methods(graph: AppGraph) -> dict[str, dict[str, bool]]:
        return routed_method_table(graph, method_table(graph.nodes))

    def _has_replica(self, deployment: str) -> bool:
        state = self._states.get(deployment)
        return state is not None and state.running > 0

    def _node(self, deployment: str) -> DeploymentNode:
        state = self._states.get(deployment)
        node = state.node if state is not None else self._graph.nodes.get(deployment)
        if node is None:
            raise NotFoundError(
                f"no deployment named {deployment!r}; deployments: {sorted(self._graph.nodes)}"
            )
        return node

    def _state(self, deployment: str) -> DeploymentState:
        state = self._states.get(deployment)
        if state is None:
            self._node(deployment)
            raise DeploymentUnavailableError(f"deployment {deployment!r} is not running")
        return state

    @staticmethod
    async def _call_replica(
        state: DeploymentState, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        replica_set = state.replicas
        model_id = outgoing_model_id()
        slot = await replica_set.acquire(model_id)
        try:
            return await slot.replica.call(method, args, kwargs, model_id=model_id)
        except ReplicaDiedError:
            if not state.idempotent(method):
                raise
        finally:
            replica_set.release(slot)
        slot = await replica_set.acquire(model_id)  # retry once, on another replica
        try:
            return await slot.replica.call(method, args, kwargs, model_id=model_id)
        finally:
            replica_set.release(slot)


def _log_cluster_only_resources(demands: dict[str, tuple[int, Resources]]) -> None:
    """Say which requests the local runtime cannot plan: custom resources and accelerator types."""
    for name, (_, resources) in demands.items():
        asked = [f"{key}={value:g}" for key, value in resources.custom.items()]
        if resources.accelerator_type is not None:
            asked.append(f"accelerator_type={resources.accelerator_type!r}")
        if asked:
            logger.warning(
                "deployment %r asks for %s: the local runtime plans GPUs by count and has no custom "
                "resources, so it runs without them (Ray honours them: --backend ray)",
                name,
                ", ".join(asked),
            )
