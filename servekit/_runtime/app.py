"""`RunningApp` (one app's lifecycle) and `run()`: start an app and get its ingress handle.

`RunningApp` owns everything between start and stop: the runtime, the event-loop thread it
runs on, redeploys (the ingress keeps its name), and a stop that runs once. `AppHandle` (from
`run`) and `Server` (from `serve`) only wrap it.
"""

from __future__ import annotations

import gc
import threading
from types import TracebackType
from typing import Any, Unpack

from servekit._replica.jobs.service import JobSlot
from servekit._replica.request_context import log_fields
from servekit._runtime.backends import make_runtime
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.interface import HttpIngress, Runtime
from servekit._runtime.jobs import Job, register_python_jobs, submit_call
from servekit._runtime.loop_thread import LoopThread
from servekit._runtime.model_watch import ModelWatcher, pin_models
from servekit._runtime.options import RunKeywords, RunOptions, run_options
from servekit._runtime.routing import RouterControl
from servekit._spec.deployment import Application
from servekit._spec.graph import AppGraph, build_graph
from servekit._telemetry.logs import configure_logging
from servekit.errors import GraphError, NotFoundError


class RunningApp:
    """An app's runtime, driven from its own event-loop thread. Use `RunningApp.start`."""

    def __init__(self, runtime: Runtime, thread: LoopThread, jobs: JobSlot | None = None) -> None:
        self.runtime = runtime
        self.thread = thread
        self.jobs = jobs or JobSlot(None, register_python_jobs(runtime))
        """The app's async jobs (their store opens at start with a data_dir, else on first use)."""
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._stopped = False
        self.model_watcher = ModelWatcher.for_graph(lambda: runtime.graph, self.update_graph)
        """Redeploys (rolling) when a model tag the app follows moves; None when it follows none."""
        if self.model_watcher is not None:
            self.model_watcher.start()

    @classmethod
    def start(cls, graph: AppGraph, options: RunOptions, http: HttpIngress | None = None) -> RunningApp:
        """Make `graph`'s runtime on the backend `options` name and start it; raises if it cannot start."""
        return cls.launch(make_runtime(graph, options, http), options)

    @classmethod
    def launch(cls, runtime: Runtime, options: RunOptions) -> RunningApp:
        """Start `runtime` (made by `make_runtime`) on a new event-loop thread of the kind `options` name.

        With `options.log_format`, this process logs in that format first (see `configure_logging`).
        """
        if options.log_format is not None:
            configure_logging(options.log_format, log_fields)
        thread = LoopThread(f"servekit-{runtime.graph.ingress}", options.loop)
        jobs = JobSlot(options.data_dir, register_python_jobs(runtime))
        try:
            if options.data_dir is not None:  # a read-only or full data dir fails the start
                thread.run(jobs.service())
            thread.run(runtime.start())
        except BaseException:
            thread.run(jobs.close())
            thread.stop()
            raise
        gc.freeze()  # models and state built at start-up stay out of every later GC pass
        return cls(runtime, thread, jobs)

    def submit(self, call: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> Job:
        """Store `call` (deployment, method, args, kwargs) as an async job."""
        return submit_call(self.jobs, self.runtime.graph, self.thread.loop, call)

    @property
    def stopped(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopped

    def update(self, app: Application) -> None:
        """Redeploy `app` over the running one, rolling changed deployments replica by replica.

        The ingress must keep its name. When a new replica cannot start, the app is left
        exactly as it was (old code, old options) and the start error is raised.
        """
        graph = pin_models(build_graph(app))
        current = self.runtime.graph.ingress
        if graph.ingress != current:
            raise GraphError(
                f"a redeploy must keep the ingress {current!r}; the new app's ingress is {graph.ingress!r}"
            )
        self.update_graph(graph)

    def update_graph(self, graph: AppGraph) -> None:
        """Redeploy a built graph (one redeploy at a time); raises as `update` does."""
        with self._update_lock:
            if self._stopped:
                return
            self.thread.run(self.runtime.update(graph))

    def router(self, name: str) -> RouterControl:
        """Operate the app's router `name` (made by `servekit.split(..., name=name)`)."""
        routers = self.runtime.routers
        if name not in routers.router_names():
            raise NotFoundError(f"no router named {name!r}; routers: {routers.router_names()}")
        return RouterControl(routers, name, self.thread.run)

    def stop(self, grace_s: float | None = None) -> None:
        """Drain in-flight requests (up to `grace_s`), stop replicas and the loop. Runs once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.model_watcher is not None:
            self.model_watcher.stop()
        try:
            self.thread.run(self.jobs.close())
            self.thread.run(self.runtime.shutdown(grace_s))
        finally:
            self.thread.stop()


class AppHandle(DeploymentHandle):
    """The ingress handle returned by `servekit.run`, which also stops the app.

    Use it as a context manager, or call `shutdown()` when done.
    """

    def __init__(self, running: RunningApp) -> None:
        super().__init__(running.runtime, running.runtime.graph.ingress, running.submit)
        self._running = running

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop the app: finish in-flight requests (up to `grace_s`), then stop every replica."""
        self._running.stop(grace_s)

    def status(self) -> dict[str, Any]:
        """The app's state, each deployment's replicas and queues (as served at `/-/status`)."""
        return self._running.runtime.status()

    def redeploy(self, app: Application) -> None:
        """Update the running app to `app` without downtime.

        Deployments whose code, options or arguments changed get new replicas one at a time,
        each ready before an old one drains; new deployments start, removed ones stop. The
        ingress must keep its name. If a new replica fails to start, the app keeps running
        exactly as before and `DeploymentStartError` says why; calling again retries.
        """
        self._running.update(app)

    def router(self, name: str) -> RouterControl:
        """Operate router `name`: `status()`, `set_weights({...})`, `switch(arm)`, `switch_back()`,
        `start_canary(sk.Canary(...))` and its `canary` (`status()`, `pause()`, `resume()`, `promote()`,
        `abort()`)."""
        return self._running.router(name)

    def get_handle(self, deployment: str) -> DeploymentHandle:
        """A handle to another deployment of the app, by its name in the graph."""
        return DeploymentHandle(self._running.runtime, deployment, self._running.submit)

    def __enter__(self) -> AppHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def run(app: Application, **options: Unpack[RunKeywords]) -> AppHandle:
    """Start `app` and return its ingress handle (no HTTP).

    Works in plain scripts and inside a running event loop (Jupyter): calls go through the
    app's own event-loop thread. `await handle.method(x)` from async code,
    `handle.method(x).result()` from sync code. Stop it with `handle.shutdown()` or
    `with servekit.run(app) as handle:`.

    Options (all keywords; a bad one raises `DeploymentOptionError` naming it):

    - `backend="local"` (the default) runs the replicas on this machine; `backend="ray"` on
      Ray Serve: on the cluster at `address` (like "auto" or "ray://head:10001"; default
      ``RAY_ADDRESS``), which keeps running after `shutdown()`, or, with neither, on a local
      Ray that servekit starts for the app and stops with it.
    - `isolation`: where replicas of deployments that do not choose run, "in_process" (the
      default) or "process" (a worker process each). `gpus`: the GPU ids to plan with (like
      "0,1"), overriding detection and ``SERVEKIT_GPUS``.
    - `start_timeout_s` bounds the start on either backend: past it the app is stopped and
      `DeploymentStartError` raised (on Ray it defaults to 600 s, for clusters that autoscale).
      `wait_for_nodes=True` (Ray) waits for nodes to join when the app does not fit yet.
    - `loop`: the app's event loop, "auto" (uvloop when installed) or "asyncio".
    - `tracing`: OpenTelemetry traces of each call across every hop (the ``otel`` extra),
      configured by the standard ``OTEL_*`` variables; None (the default) traces when
      ``OTEL_TRACES_EXPORTER`` names an exporter.
    - `log_format`: "text" or "json": servekit configures logging here and in every replica,
      each line with its request id, trace id, deployment and replica.
    """
    return AppHandle(RunningApp.start(build_graph(app), run_options(**options)))
