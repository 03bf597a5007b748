"""`LocalRuntime`: runs an app graph's replicas in this process, on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica, user_method
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.local.devices import assign_device, cuda_device_count
from servekit._runtime.local.replica_set import ReplicaSet
from servekit._spec.graph import AppGraph, DeploymentNode, HandleRef
from servekit.errors import (
    DeploymentStartError,
    DeploymentUnavailableError,
    NotFoundError,
    RequestTimeoutError,
)

logger = logging.getLogger("servekit.runtime")


class LocalRuntime:
    """Hosts every replica of an app in-process: async methods on the loop, sync ones on threads.

    Implements the runtime interface (`start`, `handle`, `scale`, `status`, `shutdown`) and
    the `Dispatcher` that handles call through.
    """

    def __init__(self, graph: AppGraph, max_threads: int | None = None) -> None:
        self._graph = graph
        self._sets: dict[str, ReplicaSet] = {}
        self._timeouts = {
            name: node.deployment.config.request_timeout_s for name, node in graph.nodes.items()
        }
        self._targets = {name: node.deployment.config.start_replicas for name, node in graph.nodes.items()}
        self._next_index = dict.fromkeys(graph.nodes, 0)
        threads = max_threads or max(8, min(64, 8 * (os.cpu_count() or 1)))
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="servekit-replica")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gpu_count: int | None = None
        self.state = "new"

    @property
    def graph(self) -> AppGraph:
        """The app graph this runtime serves."""
        return self._graph

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
            len(self._sets[name].slots) >= target for name, target in self._targets.items()
        )

    async def start(self) -> None:
        """Start every deployment, dependencies first; raises `DeploymentStartError` on failure."""
        self._loop = asyncio.get_running_loop()
        self.state = "starting"
        try:
            for node in self._graph.nodes.values():
                await self._start_deployment(node)
        except BaseException:
            await self.shutdown(grace_s=0)
            raise
        self.state = "running"

    def handle(self, deployment: str | None = None) -> DeploymentHandle:
        """A handle to `deployment` (the ingress by default)."""
        name = deployment or self._graph.ingress
        if name not in self._graph.nodes:
            raise NotFoundError(f"no deployment named {name!r}; deployments: {sorted(self._graph.nodes)}")
        return DeploymentHandle(self, name)

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method on one replica, within the deployment's request timeout."""
        replica_set = self._replica_set(deployment)
        timeout = self._timeouts[deployment]
        if timeout is None:
            return await self._call_replica(replica_set, method, args, kwargs)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._call_replica(replica_set, method, args, kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RequestTimeoutError(
                f"deployment {deployment!r} did not answer {method}() within "
                f"request_timeout_s={timeout}; the request was cancelled"
            ) from None

    async def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method on one replica and yield its chunks."""
        replica_set = self._replica_set(deployment)
        slot = await replica_set.acquire()
        try:
            async for chunk in slot.replica.stream(method, args, kwargs):
                yield chunk
        finally:
            replica_set.release(slot)

    @contextlib.asynccontextmanager
    async def replica(self, deployment: str) -> AsyncIterator[Replica]:
        """Hold a replica of `deployment` (with admission control) for custom work, like ASGI apps."""
        replica_set = self._replica_set(deployment)
        slot = await replica_set.acquire()
        try:
            yield slot.replica
        finally:
            replica_set.release(slot)

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` is a generator method; raises `NotFoundError` if it does not exist."""
        node = self._node(deployment)
        replicas = self._sets[deployment].slots if deployment in self._sets else []
        if replicas:
            return replicas[0].replica.is_streaming(method)
        func = user_method(node.deployment.target, node.deployment.is_function, method)
        from servekit._replica.replica import method_kind  # noqa: PLC0415

        return method_kind(func).streaming

    async def scale(self, deployment: str, replicas: int) -> None:
        """Run `replicas` replicas of `deployment`: start new ones, or drain and stop extra ones."""
        node = self._node(deployment)
        self._targets[deployment] = replicas
        replica_set = self._sets[deployment]
        current = replica_set.slots
        if replicas > len(current):
            await self._add_replicas(node, replica_set, replicas - len(current))
            return
        for slot in current[replicas:]:
            await replica_set.retire(slot, node.deployment.config.graceful_shutdown_timeout_s)

    def status(self) -> dict[str, Any]:
        """JSON-ready state of the app and each deployment's replicas."""
        deployments = {}
        for name, node in self._graph.nodes.items():
            replica_set = self._sets.get(name)
            view: dict[str, Any] = (
                replica_set.status() if replica_set else {"replicas": [], "ongoing": 0, "queued": 0}
            )
            deployments[name] = {
                "version": node.deployment.config.version,
                "target_replicas": self._targets[name],
                "running_replicas": len(view["replicas"]),
                **view,
            }
        return {
            "state": self.state,
            "ready": self.ready,
            "ingress": self._graph.ingress,
            "deployments": deployments,
        }

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let running ones finish (up to each deployment's grace), stop all."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        closing = []
        for name, replica_set in self._sets.items():
            grace = grace_s
            if grace is None:
                grace = self._graph.nodes[name].deployment.config.graceful_shutdown_timeout_s
            closing.append(replica_set.close(grace))
        for replicas in await asyncio.gather(*closing):
            for replica in replicas:
                replica.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.state = "stopped"

    async def _start_deployment(self, node: DeploymentNode) -> None:
        config = node.deployment.config
        replica_set = ReplicaSet(node.name, config.max_ongoing_requests, config.max_queued_requests)
        self._sets[node.name] = replica_set
        await self._add_replicas(node, replica_set, config.start_replicas)

    async def _add_replicas(self, node: DeploymentNode, replica_set: ReplicaSet, count: int) -> None:
        args = self._with_handles(node.init_args)
        kwargs = self._with_handles(node.init_kwargs)
        replicas = [self._new_replica(node) for _ in range(count)]
        results = await asyncio.gather(
            *(replica.start(args, kwargs) for replica in replicas), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        for replica, result in zip(replicas, results, strict=True):
            if result is None:
                replica_set.add(replica)
        if errors:
            for error in errors:
                logger.error("%s", error, exc_info=error)
            first = errors[0]
            if isinstance(first, DeploymentStartError):
                raise first
            raise DeploymentStartError(f"deployment {node.name!r} failed to start: {first}") from first

    def _new_replica(self, node: DeploymentNode) -> Replica:
        index = self._next_index[node.name]
        self._next_index[node.name] = index + 1
        resources = node.deployment.config.resources
        if resources.gpus > 0 and self._gpu_count is None:
            self._gpu_count = cuda_device_count()
        device, gpu_ids = assign_device(resources, index, self._gpu_count or 0)
        context = ReplicaContext(node.name, f"{node.name}#{index}", device, gpu_ids)
        return Replica(context, node.deployment.target, node.deployment.is_function, self._executor)

    def _with_handles(self, value: Any) -> Any:
        if isinstance(value, HandleRef):
            return DeploymentHandle(self, value.deployment)
        if isinstance(value, list | tuple):
            replaced = [self._with_handles(item) for item in value]
            return replaced if isinstance(value, list) else type(value)(replaced)
        if isinstance(value, dict):
            return {key: self._with_handles(item) for key, item in value.items()}
        return value

    def _node(self, deployment: str) -> DeploymentNode:
        node = self._graph.nodes.get(deployment)
        if node is None:
            raise NotFoundError(
                f"no deployment named {deployment!r}; deployments: {sorted(self._graph.nodes)}"
            )
        return node

    def _replica_set(self, deployment: str) -> ReplicaSet:
        replica_set = self._sets.get(deployment)
        if replica_set is None:
            self._node(deployment)
            raise DeploymentUnavailableError(f"deployment {deployment!r} is not running")
        return replica_set

    @staticmethod
    async def _call_replica(
        replica_set: ReplicaSet, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        slot = await replica_set.acquire()
        try:
            return await slot.replica.call(method, args, kwargs)
        finally:
            replica_set.release(slot)
