"""`ReplicaLauncher`: starts and stops the replicas of a local runtime, with their placements.

In goes a deployment node and where it runs (in-process or a worker process); out comes a
started replica with its devices, or an error with its placement released. Worker processes
are tracked until reaped, whatever happens to their replica, so shutdown leaves none behind.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.local.placement import ResourcePlanner
from servekit._runtime.local.workers.process_replica import ProcessReplica
from servekit._spec.config import Isolation
from servekit._spec.graph import DeploymentNode, with_handles
from servekit._telemetry.logs import LogFormat
from servekit._telemetry.tracing import TracingSettings

OnDeath = Callable[[ProcessReplica, str], None]


class ReplicaLauncher:
    """Makes, starts, stops and reaps replicas for one local runtime."""

    def __init__(
        self,
        runtime: Any,
        max_threads: int | None = None,
        tracing: TracingSettings | None = None,
        log_format: LogFormat | None = None,
    ) -> None:
        self._runtime = runtime
        self._tracing = tracing
        """Worker processes trace with these settings (None: they do not)."""
        self._log_format = log_format
        """The runtime, as the dispatcher of handles and worker processes' calls."""
        self.threads = max_threads or max(8, min(64, 8 * (os.cpu_count() or 1)))
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="servekit-replica")
        self.planner: ResourcePlanner | None = None
        self.methods: dict[str, dict[str, bool]] = {}
        """Each deployment's methods and whether each streams (for handles in worker processes)."""
        self._next_index: dict[str, int] = {}
        self._live: set[ProcessReplica] = set()
        """Worker processes not yet reaped, whatever state their replica is in."""

    async def start(
        self,
        node: DeploymentNode,
        isolation: Isolation,
        make_handle: Callable[[str], DeploymentHandle],
        on_death: OnDeath,
    ) -> Replica | ProcessReplica:
        """Place, build and start one replica of `node`; on failure its placement is released."""
        planner = self.require_planner()
        index = self._next_index.get(node.name, 0)
        self._next_index[node.name] = index + 1
        replica_id = f"{node.name}#{index}"
        config = node.deployment.config
        process = isolation == "process"
        explicit_cpus = "cpus" in config.resources.model_fields_set
        placement = planner.placement(replica_id) or planner.allocate(
            replica_id, config.resources, pin_cpus=process and explicit_cpus
        )
        context = ReplicaContext(node.name, replica_id, placement.device(process), placement.gpu_ids)
        replica: Replica | ProcessReplica
        if process:
            replica = ProcessReplica(
                context,
                node.deployment.target,
                node.deployment.is_function,
                runtime=self._runtime,
                methods=self.methods,
                env=placement.worker_env(),
                gpu_fraction=placement.gpu_fraction,
                cpu_ids=placement.cpu_ids,
                max_threads=min(self.threads, 32),
                batching=config.batching,
                tracing=self._tracing,
                log_format=self._log_format,
            )
            replica.on_death = on_death
            self._live.add(replica)
            args, kwargs = node.init_args, node.init_kwargs
        else:
            replica = Replica(
                context, node.deployment.target, node.deployment.is_function, self.executor, config.batching
            )
            args = with_handles(node.init_args, make_handle)
            kwargs = with_handles(node.init_kwargs, make_handle)
        try:
            await replica.start(args, kwargs)
        except BaseException:
            planner.release(replica_id)
            if isinstance(replica, ProcessReplica):
                await asyncio.shield(self._reap(replica))
            raise
        return replica

    async def stop(self, replica: Replica | ProcessReplica) -> None:
        """Stop `replica` (a worker process is asked to exit, then killed) and free its placement."""
        try:
            if isinstance(replica, ProcessReplica):
                await asyncio.shield(self._reap(replica))
            else:
                replica.stop()
        finally:
            if self.planner is not None:
                self.planner.release(replica.context.replica_id)

    async def close(self) -> None:
        """Reap every worker process still alive and stop the thread pool."""
        await asyncio.gather(*(self._reap(replica) for replica in list(self._live)), return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def require_planner(self) -> ResourcePlanner:
        """The planner, which the runtime sets when it starts."""
        if self.planner is None:
            raise RuntimeError("the runtime has not been started")
        return self.planner

    async def _reap(self, replica: ProcessReplica) -> None:
        await replica.aclose()
        self._live.discard(replica)
