"""The classes Ray Serve runs: one servekit deployment each, around servekit's own `Replica`.

`RayReplica` builds the user's instance with servekit's `Replica` (the runner every backend
uses), with servekit handles over Ray handles for the bound deployments, and serves two
methods to Ray: `call` (unary) and `stream` (generators). `request_timeout_s` is applied by
the caller (`RayDispatcher`, or `IngressView` for HTTP), which answers 504 at once, and here
too: past it async code is cancelled, and a sync call keeps its Ray request (and so its slot
on this replica) until its thread returns, counted as abandoned meanwhile. It also
applies `batching` options in place through Ray's `reconfigure` (they travel as `user_config`),
answers Ray's health checks with the user's `check_health()` and reports latency for the
'latency' autoscaling policy.

The ingress adds servekit's admission (max_ongoing_requests and a bounded queue, so overload
gets servekit's 503) and, when served over HTTP, the Starlette app that the edge builds,
through `IngressView`, the `ServingRuntime` of this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from prometheus_client.core import Metric
from ray import serve

from servekit._replica import metrics as user_metrics
from servekit._replica.arrivals import Incoming, incoming
from servekit._replica.batch_metrics import batch_families
from servekit._replica.batching import set_default_wait
from servekit._replica.context import ReplicaContext
from servekit._replica.deadline import chunks_within_timeout, within_timeout
from servekit._replica.devices import cap_torch_memory
from servekit._replica.latency import LatencyWindow
from servekit._replica.multiplex import outgoing_model_id
from servekit._replica.replica import Replica
from servekit._replica.request_context import RequestContext, log_fields, request_scope, set_request
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.ray.autoscaling import P95_LATENCY_METRIC
from servekit._runtime.ray.dispatcher import RayDispatcher
from servekit._runtime.ray.metrics import RayMetricsExport
from servekit._runtime.ray.multiplex import use_ray_multiplexing
from servekit._runtime.ray.options import batching_options
from servekit._runtime.ray.routers import RayRouters
from servekit._runtime.ray.ship import ReplicaSpec, restore_annotation_names, unpack
from servekit._runtime.ray.status import fetch_app_status
from servekit._runtime.replica_set import ReplicaSet
from servekit._runtime.routing import RoutingDispatcher
from servekit._spec.graph import AppGraph, iter_handle_refs, with_handles
from servekit._telemetry import tracing
from servekit._telemetry.logs import configure_logging
from servekit._telemetry.metrics import MethodCalls, call_families, merge_families
from servekit._telemetry.status import status_families
from servekit.errors import NotFoundError


class RayReplica:
    """One replica of a servekit deployment inside a Ray Serve actor."""

    async def __init__(self, spec: bytes, handles: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        self.spec: ReplicaSpec = unpack(spec)
        node = self.spec.node
        restore_annotation_names(node.deployment.target, self.spec.annotation_names)
        config = node.deployment.config
        self.name = node.name
        self.loop = asyncio.get_running_loop()
        self.dispatcher = RayDispatcher(
            self.loop,
            _any_of_app(handles, self.spec),
            self.spec.methods,
            self.spec.idempotent,
            self.spec.timeouts,
        )
        self.context = _replica_context(node.name)
        # batches left to the backend's default fill their window under load: most of the
        # queue waits in Ray Serve's proxy, where the batcher cannot see it coming
        set_default_wait("fill")
        _start_telemetry(self.spec, self.context)
        if self.context.gpu_ids and 0 < config.resources.gpus < 1:
            cap_torch_memory(config.resources.gpus)
        threads = max(8, min(64, 8 * (os.cpu_count() or 1)))
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="servekit-replica")
        self.replica = Replica(
            self.context, node.deployment.target, node.deployment.is_function, self._executor, config.batching
        )
        look_back = config.autoscaling.look_back_period_s if config.autoscaling is not None else 10.0
        self._look_back_s = look_back
        self._latencies = LatencyWindow()
        self._timeout = config.request_timeout_s
        bound = {ref.deployment for ref in iter_handle_refs([node.init_args, node.init_kwargs])}
        self.routing = RayRouters(
            self.spec.app_name, self.spec.routers, self.dispatcher.call, self.dispatcher.stream, routed=bound
        )
        self.routing.start()
        self.routed = RoutingDispatcher(self.dispatcher, self.routing.routers)
        make_handle = functools.partial(DeploymentHandle, self.routed)
        await self.replica.start(
            with_handles(node.init_args, make_handle), with_handles(node.init_kwargs, make_handle)
        )
        use_ray_multiplexing(self.replica.instance)
        self.calls = MethodCalls()
        self.metrics_export = RayMetricsExport([self.metric_families])
        self.metrics_export.start()

    async def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None = None,
    ) -> Any:
        """Run the user's unary `method` (a cancelled sync call returns once its thread does), in the
        caller's request `context`."""
        started = time.perf_counter()
        ok = False
        try:
            model_id = serve.get_multiplexed_model_id() or None
            with request_scope(context):
                call = self.replica.call(method, args, kwargs, hold_abandoned=True, model_id=model_id)
                result = await within_timeout(call, self._timeout, self.name, method)
            ok = True
            return result
        finally:
            self._latencies.add(time.monotonic(), (time.perf_counter() - started) * 1000)
            self.calls.record(method, time.perf_counter() - started, ok)

    async def stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None = None,
    ) -> AsyncIterator[Any]:
        """Run the user's generator `method`, yielding its chunks."""
        if context is not None:
            set_request(context)  # this generator's own context
        model_id = serve.get_multiplexed_model_id() or None
        chunks = self.replica.stream(method, args, kwargs, hold_abandoned=True, model_id=model_id)
        started, ok = time.perf_counter(), False
        try:
            async with contextlib.aclosing(
                chunks_within_timeout(chunks, self._timeout, self.name, method)
            ) as timed:
                async for chunk in timed:
                    yield chunk
            ok = True
        finally:
            self.calls.record(method, time.perf_counter() - started, ok)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray's in-place update (at start, and on a redeploy that changes only `user_config`):
        apply the deployment's `batching` options without restarting the replica."""
        await self.replica.configure_batching(batching_options(user_config))

    async def check_health(self) -> None:
        """Ray's health check: the user's `check_health()` when defined (raising marks it unhealthy)."""
        await self.replica.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for Ray's autoscaler: this replica's recent p95 latency."""
        p95 = self._latencies.p95(time.monotonic(), self._look_back_s)
        return {} if p95 is None else {P95_LATENCY_METRIC: p95}

    def batch_stats(self) -> dict[str, dict[str, Any]]:
        """Stats of each `@batch` method's queue on this replica."""
        return self.replica.batch_stats()

    def model_status(self) -> dict[str, Any] | None:
        """The model versions this replica serves (bound with `servekit.model`), for status."""
        return self.replica.model_status()

    def abandoned(self) -> int:
        """Calls whose caller gave up while their sync code still runs here."""
        return self.replica.abandoned

    def metric_families(self) -> list[Metric]:
        """This replica's calls, `@batch` queues and the user metrics of its process."""
        replica = {"id": self.context.replica_id, "device": self.context.device}
        info = status_families({"deployments": {self.name: {"replicas": [replica]}}})
        calls = call_families({self.name: self.calls})
        return merge_families(calls, batch_families(self.replica), info, user_metrics.collect())

    async def __del__(self) -> None:
        export: RayMetricsExport | None = getattr(self, "metrics_export", None)
        if export is not None:
            export.stop()
        routing: RayRouters | None = getattr(self, "routing", None)
        if routing is not None:
            routing.close()
        replica: Replica | None = getattr(self, "replica", None)  # None when __init__ failed early
        if replica is not None:
            replica.stop()
        executor: ThreadPoolExecutor | None = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        active = tracing.active()
        if active is not None:  # export the spans still buffered
            await asyncio.to_thread(active.shutdown)


class IngressReplica(RayReplica):
    """The ingress deployment: servekit admits its requests itself, as the local runtime does."""

    async def __init__(self, spec: bytes, handles: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        await super().__init__(spec, handles)
        config = self.spec.node.deployment.config
        self.admission = ReplicaSet(self.name, config.max_ongoing_requests, config.max_queued_requests)
        self.admission.add(self.replica)
        self.serving = IngressView(self)

    async def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None = None,
        *,
        hold_abandoned: bool = True,
    ) -> Any:
        """Like `RayReplica.call`, once admitted (or refused with `OverloadedError`).

        HTTP requests served here (`IngressView`) pass `hold_abandoned=False`: admission keeps
        the slot of an abandoned call, and the caller gets its 504 at once.
        """
        if context is not None:
            set_request(context)  # called through Ray: this task serves the caller's request
        slot = await self.admission.acquire()
        try:
            started, ok = time.perf_counter(), False
            try:
                model_id = outgoing_model_id() if not hold_abandoned else serve.get_multiplexed_model_id()
                call = self.replica.call(
                    method, args, kwargs, hold_abandoned=hold_abandoned, model_id=model_id or None
                )
                if hold_abandoned:  # called through Ray: bounded here too (see the module docstring)
                    call = within_timeout(call, self._timeout, self.name, method)
                result = await call
                ok = True
                return result
            finally:
                self._latencies.add(time.monotonic(), (time.perf_counter() - started) * 1000)
                self.calls.record(method, time.perf_counter() - started, ok)
        finally:
            self.admission.release(slot)

    async def stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None = None,
        *,
        hold_abandoned: bool = True,
    ) -> AsyncIterator[Any]:
        """Like `RayReplica.stream`, once admitted."""
        if context is not None:
            set_request(context)
        slot = await self.admission.acquire()
        started, ok = time.perf_counter(), False
        try:
            model_id = outgoing_model_id() if not hold_abandoned else serve.get_multiplexed_model_id()
            chunks = self.replica.stream(
                method, args, kwargs, hold_abandoned=hold_abandoned, model_id=model_id or None
            )
            if hold_abandoned:  # called through Ray: bounded here too (see the module docstring)
                chunks = chunks_within_timeout(chunks, self._timeout, self.name, method)
            async with contextlib.aclosing(chunks) as timed:  # type: ignore[type-var]
                async for chunk in timed:
                    yield chunk
            ok = True
        finally:
            self.calls.record(method, time.perf_counter() - started, ok)
            self.admission.release(slot)


class _HttpIngress(IngressReplica):
    def __serve_build_asgi_app__(self) -> Any:
        build_app = self.spec.build_app
        if build_app is None:
            raise RuntimeError("the HTTP ingress was deployed without an app builder")
        app = build_app(self.serving)
        http = getattr(app.state, "servekit_http_metrics", None)
        if http is not None:  # the edge's request metrics go to Ray's pipeline too
            self.metrics_export.add_source(http.families)
        return _counting_incoming(app, Incoming())


def _counting_incoming(app: Any, calls: Incoming) -> Any:
    """`app`, counting each HTTP request as on its way to a batch queue until it gets there.

    Ray Serve's proxy hands a request to this replica before its body: the app fetches the
    body from the proxy with an actor call, milliseconds under load. A batch forming meanwhile
    holds for the requests that are known to be coming (see `servekit._replica.arrivals`).
    """

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        with incoming(calls):
            await app(scope, receive, send)

    return counted


HttpIngressReplica = serve.ingress()(_HttpIngress)
"""The ingress served over HTTP by Ray Serve's proxy: servekit's Starlette app, in the replica."""


class IngressView:
    """The `ServingRuntime` of an ingress replica: what servekit's Starlette app calls on Ray."""

    request_ids_echoed = True
    """Ray Serve's proxy gives each request an `x-request-id` (the client's, or a new one) and
    echoes it: the edge takes that id for the request context and adds no header of its own."""

    def __init__(self, ingress: IngressReplica) -> None:
        self._ingress = ingress
        self._graph = AppGraph(ingress.name, {ingress.name: ingress.spec.node}, dict(ingress.spec.routers))
        self._timeout = ingress.spec.node.deployment.config.request_timeout_s
        self._status: dict[str, Any] = {}

    @property
    def edge_copies(self) -> int:
        """How many ingress replicas serve HTTP side by side (at start): each enforces its share of
        the edge's rate limits, as Ray Serve's proxies spread a client's requests over them."""
        return max(1, self._ingress.spec.node.deployment.config.start_replicas)

    @property
    def graph(self) -> AppGraph:
        """A graph of the ingress node alone (its endpoints are the routes)."""
        return self._graph

    @property
    def state(self) -> str:
        """The app's state as Ray Serve last reported it."""
        return str(self._status.get("state", "running"))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The replica's event loop."""
        return self._ingress.loop

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `method` here for the ingress itself (within its timeout), else on one of `deployment`."""
        if deployment == self._ingress.name:
            call = self._ingress.call(method, args, kwargs, hold_abandoned=False)
            return await within_timeout(call, self._timeout, deployment, method)
        return await self._ingress.routed.call(deployment, method, args, kwargs)

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Stream `method` here for the ingress itself (chunks within its timeout), else from `deployment`."""
        if deployment == self._ingress.name:
            chunks = self._ingress.stream(method, args, kwargs, hold_abandoned=False)
            return chunks_within_timeout(chunks, self._timeout, deployment, method)
        return self._ingress.routed.stream(deployment, method, args, kwargs)

    @property
    def routers(self) -> RayRouters:
        """The app's routers as this replica sees them (their state: the app's actor)."""
        return self._ingress.routing

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` of `deployment` is a generator method."""
        return self._ingress.routed.is_streaming(deployment, method)

    @contextlib.asynccontextmanager
    async def replica(self, deployment: str) -> AsyncIterator[Any]:
        """This replica, once admitted, for the user's ASGI app mounted with `@ingress`."""
        if deployment != self._ingress.name:
            raise NotFoundError(f"only the ingress {self._ingress.name!r} runs in this replica")
        slot = await self._ingress.admission.acquire()
        try:
            yield self._ingress.replica
        finally:
            self._ingress.admission.release(slot)

    async def is_ready(self) -> bool:
        """Whether Ray Serve reports the app running with every deployment healthy."""
        await self.refresh_stats()
        return bool(self._status.get("ready"))

    def status(self) -> dict[str, Any]:
        """The app's deployments and replicas on the cluster, as last fetched."""
        return self._status

    def metric_families(self) -> list[Metric]:
        """The ingress replica's calls and batches and the user metrics of its process (the rest of
        the app's replicas export theirs through Ray's metrics)."""
        ingress = self._ingress
        calls = call_families({ingress.name: ingress.calls})
        return merge_families(calls, batch_families(ingress.replica), user_metrics.collect())

    async def refresh_stats(self) -> None:
        """Ask Ray Serve's controller for the app's state (off the event loop)."""
        spec = self._ingress.spec
        status = await asyncio.to_thread(fetch_app_status, spec.app_name, spec.versions, self._ingress.name)
        if self._ingress.spec.routers:
            with contextlib.suppress(Exception):  # the state actor restarts: show the rest meanwhile
                status["routers"] = (await self._ingress.routing.router_view())["routers"]
        own = status["deployments"].get(self._ingress.name, {})
        admission = self._ingress.admission
        own.update(ongoing=admission.ongoing, queued=admission.queued, abandoned=admission.abandoned)
        for replica in own.get("replicas", []):
            if replica["id"] == self._ingress.context.replica_id:  # the one replica seen from here
                replica["batching"] = self._ingress.batch_stats()
                replica["model"] = self._ingress.model_status()
        self._status = status


def _any_of_app(handles: dict[str, Any], spec: ReplicaSpec) -> Callable[[str], Any]:
    """Ray's handle to a deployment: a bound one, else (a router's arm this replica switches to, say)
    one looked up in the app."""

    def find(name: str) -> Any:
        found = handles.get(name)
        if found is None and name in spec.node_names:
            found = handles[name] = serve.get_deployment_handle(name, app_name=spec.app_name)
        return found

    return find


def _start_telemetry(spec: ReplicaSpec, context: ReplicaContext) -> None:
    """Trace (once per actor process) and log as the app's settings say."""
    if spec.log_format is not None:
        replica = context.replica_id
        configure_logging(spec.log_format, log_fields, deployment=context.deployment, replica=replica)
    if spec.tracing is not None and tracing.active() is None:
        tracing.start_tracing(spec.tracing)


def _replica_context(deployment: str) -> ReplicaContext:
    """servekit's replica context from Ray's: the replica's tag, and the GPUs Ray gave it."""
    tag = serve.get_replica_context().replica_tag
    gpu_ids = tuple(int(gpu) for gpu in ray.get_gpu_ids())
    device = "cuda:0" if gpu_ids else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPUs
    return ReplicaContext(deployment, f"{deployment}#{tag}", device, gpu_ids)
