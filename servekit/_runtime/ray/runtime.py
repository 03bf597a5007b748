"""`RayRuntime`: runs an app graph as Ray Serve deployments, driven from the caller's process.

Each deployment node becomes one Ray Serve deployment of `RayReplica` (the ingress:
`IngressReplica`, or `HttpIngressReplica` when Ray Serve's proxy serves it), with the options
`options.deployment_options` maps. Ray places, scales, health-checks and rolls the replicas;
servekit checks first that they can fit the cluster at all (or will, once its autoscaler adds
nodes: then the start waits, logging progress; `capacity` decides), watches the start so a
failing constructor fails `start()` with its traceback, and calls the app through
`RayDispatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from types import ModuleType
from typing import Any, cast

from ray import serve
from ray.serve import RunTarget

from servekit._replica.deadline import request_timeouts
from servekit._replica.replica import idempotent_methods, method_table
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.interface import HttpIngress
from servekit._runtime.options import RunOptions
from servekit._runtime.ray.capacity import (
    NodeWait,
    Short,
    plan_start,
    progress_line,
    short_of,
    timeout_message,
)
from servekit._runtime.ray.cluster import RayCluster
from servekit._runtime.ray.dispatcher import RayDispatcher, RayHandle
from servekit._runtime.ray.options import code_version, demand, deployment_options, replica_needs, total_cpus
from servekit._runtime.ray.replica import HttpIngressReplica, IngressReplica, RayReplica
from servekit._runtime.ray.routers import RayRouters, ensure_actor, kill_actor, router_status
from servekit._runtime.ray.ship import ReplicaSpec, UserCode, annotation_names, pack, user_modules
from servekit._runtime.ray.status import fetch_app_status, serve_details, status_text
from servekit._runtime.routing import RoutingDispatcher, routed_method_table
from servekit._spec.graph import AppGraph
from servekit._telemetry.tracing import Tracing, start_tracing, tracing_settings
from servekit.errors import (
    DeploymentOptionError,
    DeploymentStartError,
    DeploymentUnavailableError,
    InsufficientResourcesError,
    NotFoundError,
)

logger = logging.getLogger("servekit.ray")

DEFAULT_START_TIMEOUT_S = 600.0
"""How long `start()` waits for Ray to run every replica (a cluster may be autoscaling)."""
_POLL_S = 0.2
_PROGRESS_S = 5.0
"""How often a start that waits for nodes logs its progress."""
_STOP_SLACK_S = 30.0
"""How much longer than the longest graceful shutdown the app's deletion may take."""
_SURGE_PERCENT = 1
"""Ray's max_surge_percent: at least one extra replica during a roll, so a new one is ready
before an old one drains (servekit's rolling-update rule)."""


class RayRuntime:
    """An app on Ray Serve: deploy, call, scale, update, status and delete, from this process."""

    def __init__(
        self,
        graph: AppGraph,
        options: RunOptions | None = None,
        *,
        http: HttpIngress | None = None,
        app_name: str | None = None,
    ) -> None:
        options = options or RunOptions(backend="ray")
        if options.isolation == "in_process":
            raise DeploymentOptionError(
                "isolation='in_process' cannot run on Ray: every Ray Serve replica runs in an actor "
                "process of its own (drop the option for --backend ray)"
            )
        self._graph = graph
        self._cluster = RayCluster(options.address, options.gpus)
        self._http = http
        self._app_name = app_name or graph.ingress
        self._start_timeout_s = (
            DEFAULT_START_TIMEOUT_S if options.start_timeout_s is None else options.start_timeout_s
        )
        self._wait_for_nodes = options.wait_for_nodes
        self._telemetry = (tracing_settings(options.tracing, self._app_name, os.environ), options.log_format)
        self._tracing: Tracing | None = None
        self._node_wait: NodeWait | None = None
        """Set while a start waits for nodes the cluster does not have yet."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: RoutingDispatcher | None = None
        self._http_address: tuple[str, int] | None = None
        self._user_code: UserCode | None = None
        self._last_rollout: dict[str, Any] | None = None
        self._routing: RayRouters | None = None
        self._handles: dict[str, RayHandle] = {}
        """Ray's handle to each deployment, fetched after each deploy (off the event loop)."""
        self.state = "new"

    @property
    def graph(self) -> AppGraph:
        """The app graph as last deployed."""
        return self._graph

    @property
    def routers(self) -> RayRouters:
        """The app's traffic-split routers (their state: the app's named actor on the cluster)."""
        if self._routing is None:
            raise DeploymentUnavailableError(f"app {self._app_name!r} is not running on Ray")
        return self._routing

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop handle calls start on (set by `start`)."""
        if self._loop is None:
            raise RuntimeError("the runtime has not been started")
        return self._loop

    @property
    def location(self) -> str:
        """Where the app runs: the Serve application's name."""
        return f"on Ray Serve as app {self._app_name!r}"

    def http_address(self) -> tuple[str, int]:
        """Where Ray Serve's proxy serves the app."""
        if self._http_address is None:
            raise RuntimeError("the app is not served over HTTP")
        return self._http_address

    async def start(self) -> None:
        """Join or start Ray, check the app fits, deploy it and wait until every replica runs.

        When the replicas do not fit the alive nodes but the cluster's autoscaler can add nodes
        that make them fit (or `wait_for_nodes` was passed), the app is deployed anyway and the
        start waits up to the start timeout for the nodes, logging its progress.

        Raises `InsufficientResourcesError` before deploying when a replica cannot fit any node
        (or the replicas together exceed the cluster) and no wait applies, or when a wait for
        nodes runs out (saying what each deployment lacked); `DeploymentStartError` when a
        replica's constructor fails or Ray does not run the app within the start timeout.
        """
        self._loop = asyncio.get_running_loop()
        self.state = "starting"
        if self._telemetry[0] is not None:  # the spans of calls from this process
            self._tracing = start_tracing(self._telemetry[0])
        try:
            await asyncio.to_thread(self._start)
        except BaseException:
            await asyncio.shield(_on_daemon_thread(self._stop))
            self.state = "stopped"
            raise
        self._dispatcher = self._dispatcher_for(self._graph)
        self.state = "running"

    def handle(self, deployment: str | None = None) -> DeploymentHandle:
        """A handle to `deployment` (the ingress by default)."""
        name = deployment or self._graph.ingress
        if name not in self._graph.nodes and name not in self._graph.routers:
            raise NotFoundError(f"no deployment named {name!r}; deployments: {sorted(self._graph.nodes)}")
        return DeploymentHandle(self, name)

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method on a replica of `deployment` on the cluster."""
        return await self._calls.call(deployment, method, args, kwargs)

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method on a replica of `deployment` and yield its chunks."""
        return self._calls.stream(deployment, method, args, kwargs)

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` of `deployment` is a generator method."""
        return self._calls.is_streaming(deployment, method)

    async def scale(self, deployment: str, replicas: int) -> None:
        """Run `replicas` replicas of `deployment` (Ray changes the count without restarting any)."""
        node = self._graph.nodes.get(deployment)
        if node is None:
            raise NotFoundError(
                f"no deployment named {deployment!r}; deployments: {sorted(self._graph.nodes)}"
            )
        scaled = replace(node, deployment=node.deployment.options(num_replicas=replicas))
        await self.update(AppGraph(self._graph.ingress, {**self._graph.nodes, deployment: scaled}))

    async def update(self, graph: AppGraph) -> None:
        """Redeploy `graph`: Ray rolls deployments whose code, arguments or resources changed (a new
        replica ready before an old one drains) and updates the rest in place.

        When a new replica cannot start, the previous graph is deployed again (Ray keeps the old
        replicas meanwhile), so the app runs and reports exactly the old version.
        """
        try:
            await asyncio.to_thread(self._deploy, graph)
        except Exception as exc:
            self._last_rollout = {"state": "failed", "error": str(exc), "at": time.time()}
            await asyncio.to_thread(self._deploy, self._graph)
            raise DeploymentStartError(f"the redeploy failed and was rolled back: {exc}") from exc
        self._last_rollout = {"state": "done", "error": None, "at": time.time()}
        self._graph = graph
        self._dispatcher = self._dispatcher_for(graph)

    def status(self) -> dict[str, Any]:
        """The app's deployments and replicas as Ray Serve reports them (a blocking call)."""
        if self.state != "running":
            return {
                "state": self.state,
                "ready": False,
                "backend": "ray",
                "app": self._app_name,
                "deployments": {},
            }
        status = fetch_app_status(self._app_name, self._versions(self._graph), self._graph.ingress)
        routers = router_status(self._app_name, self._graph.routers)
        return {**status, "last_rollout": self._last_rollout, "routers": routers}

    async def refresh_stats(self) -> None:
        """Nothing to refresh: `status()` asks Ray each time."""

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Delete the app (Ray drains each replica for its graceful_shutdown_timeout_s) and, when
        servekit started this Ray, stop it."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        if self._routing is not None:
            self._routing.close()
        grace = max(self._grace_s(), grace_s or 0.0) + _STOP_SLACK_S
        try:
            await self._stop_within(grace)
        finally:
            self.state = "stopped"
            if self._tracing is not None:
                await asyncio.to_thread(self._tracing.shutdown)

    async def _stop_within(self, grace_s: float) -> None:
        """Delete the app and let go of Ray, waiting at most `grace_s`, and not at all on a dead Ray."""
        stopping = _on_daemon_thread(self._stop)
        deadline = time.monotonic() + grace_s
        while not stopping.done():
            if not self._cluster.alive():
                logger.error("the local Ray servekit started has died (a signal to its processes?)")
                try:
                    await asyncio.to_thread(self._cluster.abandon)
                except Exception:
                    logger.exception("could not clean up the dead local Ray")
                return
            if time.monotonic() > deadline:
                logger.error("Ray did not confirm the app's deletion within %g s; leaving it to Ray", grace_s)
                return
            await asyncio.wait([stopping], timeout=_POLL_S)
        stopping.result()

    # -- blocking work, on a thread ---------------------------------------------------------------

    def _start(self) -> None:
        self._cluster.connect(total_cpus(demand(self._graph, at_most=True)))
        self._node_wait = plan_start(
            demand(self._graph),
            self._cluster.nodes(),
            self._cluster.autoscaler(),
            wait_for_nodes=self._wait_for_nodes,
            timeout_s=self._start_timeout_s,
        )
        if self._node_wait is not None:
            level = logging.WARNING if self._node_wait.warn else logging.INFO
            logger.log(level, "%s", self._node_wait.notice)
        self._http_address = self._cluster.start_serve(self._http)
        try:
            self._deploy(self._graph)
        finally:
            self._node_wait = None

    def _deploy(self, graph: AppGraph) -> None:
        modules = user_modules(graph.nodes.values())
        if self._user_code is not None:
            self._user_code.close()
        self._user_code = UserCode(modules)
        if graph.routers:
            ensure_actor(self._app_name, graph.routers)  # before the replicas, which poll it
        route_prefix = "/" if self._http is not None else None
        target = RunTarget(target=self._build(graph, modules), name=self._app_name, route_prefix=route_prefix)
        with warnings.catch_warnings():  # Ray deprecates metrics_interval_s, but still honours it
            warnings.simplefilter("ignore", DeprecationWarning)
            serve.run_many([target], wait_for_applications_running=False)
        self._wait_running(graph)
        self._handles = {
            name: serve.get_deployment_handle(name, app_name=self._app_name) for name in graph.nodes
        }

    def _build(self, graph: AppGraph, modules: list[ModuleType]) -> Any:
        methods = routed_method_table(graph, method_table(graph.nodes))
        idempotent = idempotent_methods(graph.nodes)
        timeouts = request_timeouts(graph.nodes)
        versions = self._versions(graph)
        access_log = self._http is not None and self._http.access_log
        bound: dict[str, Any] = {}
        for name, node in graph.nodes.items():  # dependencies come first
            ingress = name == graph.ingress
            spec = ReplicaSpec(
                node,
                self._app_name,
                methods,
                idempotent,
                versions,
                timeouts=timeouts,
                routers=graph.routers,
                node_names=frozenset(graph.nodes),
                build_app=self._http.build_app if ingress and self._http is not None else None,
                annotation_names=annotation_names(node.deployment.target) if ingress else {},
                tracing=self._telemetry[0],
                log_format=self._telemetry[1],
            )
            cls = (
                RayReplica
                if not ingress
                else HttpIngressReplica
                if self._http is not None
                else IngressReplica
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                deployment = cast(Any, serve.deployment(cls)).options(
                    **deployment_options(node, ingress=ingress, access_log=access_log),
                    version=code_version(node),
                    max_surge_percent=_SURGE_PERCENT,
                    _internal=True,
                )
            bound[name] = deployment.bind(pack(spec, modules), {dep: bound[dep] for dep in node.dependencies})
        return bound[graph.ingress]

    def _wait_running(self, graph: AppGraph) -> None:
        started = time.monotonic()
        deadline = started + self._start_timeout_s
        next_progress = started + _PROGRESS_S
        warned: set[str] = set()
        while True:
            app = serve.status().applications.get(self._app_name)
            if app is not None and app.status == "RUNNING":
                return
            if app is not None:
                _raise_on_failure(self._app_name, app)
                if self._node_wait is None:
                    _warn_once(app, warned)
            now = time.monotonic()
            if self._node_wait is not None and now >= next_progress:
                next_progress = now + _PROGRESS_S
                logger.info("%s", self._progress(graph, app, self._node_wait, now - started))
            if now > deadline:
                raise self._timeout_error(graph, app)
            time.sleep(_POLL_S)

    def _progress(self, graph: AppGraph, app: Any, wait: NodeWait, elapsed_s: float) -> str:
        autoscaler = self._cluster.autoscaler()
        launching = autoscaler.launching if autoscaler is not None else ()
        return progress_line(wait, _short(graph, app), elapsed_s, self._start_timeout_s, launching)

    def _timeout_error(self, graph: AppGraph, app: Any) -> DeploymentStartError:
        if self._node_wait is not None:
            message = timeout_message(
                self._app_name,
                self._start_timeout_s,
                _short(graph, app),
                self._cluster.nodes(),
                self._cluster.autoscaler(),
            )
            return InsufficientResourcesError(message)
        detail = "" if app is None else f": {_messages(app)}"
        return DeploymentStartError(
            f"Ray did not run app {self._app_name!r} within {self._start_timeout_s:g} s{detail}"
        )

    def _stop(self) -> None:
        try:
            if self._cluster.serving and self._app_name in serve_details_apps():
                serve.delete(self._app_name)
            kill_actor(self._app_name)  # the routers' state, if the app has (or had) routers
        finally:
            self._cluster.close()
            if self._user_code is not None:
                self._user_code.close()
                self._user_code = None

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _calls(self) -> RoutingDispatcher:
        if self._dispatcher is None:
            raise DeploymentUnavailableError(f"app {self._app_name!r} is not running on Ray")
        return self._dispatcher

    def _dispatcher_for(self, graph: AppGraph) -> RoutingDispatcher:
        inner = RayDispatcher(
            self.loop,
            self._ray_handle,
            routed_method_table(graph, method_table(graph.nodes)),
            idempotent_methods(graph.nodes),
            request_timeouts(graph.nodes),
        )
        if self._routing is not None:
            self._routing.close()
        self._routing = RayRouters(self._app_name, graph.routers, inner.call, inner.stream)
        self._routing.start()
        return RoutingDispatcher(inner, self._routing.routers)

    def _ray_handle(self, deployment: str) -> RayHandle | None:
        return self._handles.get(deployment)

    def _grace_s(self) -> float:
        return max(node.deployment.config.graceful_shutdown_timeout_s for node in self._graph.nodes.values())

    @staticmethod
    def _versions(graph: AppGraph) -> dict[str, str | None]:
        return {name: node.deployment.config.version for name, node in graph.nodes.items()}


def _on_daemon_thread(work: Callable[[], None]) -> asyncio.Future[None]:
    """Run `work` on a daemon thread (one stuck on a dead cluster cannot hold up the exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop stopped waiting and closed
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="servekit-ray-stop", daemon=True).start()
    return done


def serve_details_apps() -> set[str]:
    """Names of the Serve applications on the cluster (none when Serve is not running)."""
    try:
        return set(serve_details().get("applications", {}))
    except Exception:  # Serve never started, or the cluster is gone
        return set()


def _raise_on_failure(app_name: str, app: Any) -> None:
    """Fail the start at once when Ray reports the app failed or a replica constructor raised."""
    if app.status == "DEPLOY_FAILED":
        raise DeploymentStartError(f"Ray failed to deploy app {app_name!r}: {_messages(app)}")
    for name, deployment in app.deployments.items():
        trigger = status_text(getattr(deployment, "status_trigger", ""))
        if trigger == "REPLICA_STARTUP_FAILED" or status_text(deployment.status) == "DEPLOY_FAILED":
            raise DeploymentStartError(f"deployment {name!r} failed to start on Ray: {deployment.message}")


def _short(graph: AppGraph, app: Any) -> list[Short]:
    """The deployments of `graph` with fewer replicas running than they ask for, per Ray's `app`."""
    demands = demand(graph)
    deployments = app.deployments if app is not None else {}
    running = {
        name: sum(
            count for state, count in (d.replica_states or {}).items() if status_text(state) == "RUNNING"
        )
        for name, d in deployments.items()
    }
    needs = {name: replica_needs(resources) for name, (_, resources) in demands.items()}
    return short_of(demands, running, needs)


def _warn_once(app: Any, warned: set[str]) -> None:
    for name, deployment in app.deployments.items():
        message = deployment.message or ""
        if message and "scheduled" in message and name not in warned:
            warned.add(name)
            logger.warning("deployment %r is waiting for Ray: %s", name, message)


def _messages(app: Any) -> str:
    parts = [app.message] if app.message else []
    parts += [f"{name}: {d.message}" for name, d in app.deployments.items() if d.message]
    return "; ".join(parts) or status_text(app.status)
