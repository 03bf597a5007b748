"""`run()`: start an app on a backend and get its ingress handle, from scripts or notebooks."""

from __future__ import annotations

import gc
import threading
from types import TracebackType
from typing import Any

from servekit._runtime.backends import make_runtime
from servekit._runtime.handle import DeploymentHandle
from servekit._runtime.interface import Backend, Runtime
from servekit._runtime.loop_thread import LoopThread
from servekit._spec.config import Isolation
from servekit._spec.deployment import Application
from servekit._spec.graph import build_graph


class RunningApp:
    """An app's runtime, driven from its own event-loop thread; `stop()` drains and joins it."""

    def __init__(self, runtime: Runtime) -> None:
        self.thread = LoopThread(f"servekit-{runtime.graph.ingress}")
        self.runtime = runtime
        self._lock = threading.Lock()
        self._stopped = False
        try:
            self.thread.run(self.runtime.start())
        except BaseException:
            self.thread.stop()
            raise
        gc.freeze()  # models and state built at start-up stay out of every later GC pass

    def update(self, app: Application) -> None:
        """Redeploy `app` over the running one, rolling changed deployments replica by replica."""
        self.thread.run(self.runtime.update(build_graph(app)))

    def stop(self, grace_s: float | None = None) -> None:
        """Drain in-flight requests (up to `grace_s`), stop replicas and the loop. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.thread.run(self.runtime.shutdown(grace_s))
        finally:
            self.thread.stop()


class AppHandle(DeploymentHandle):
    """The ingress handle returned by `servekit.run`, which also stops the app.

    Use it as a context manager, or call `shutdown()` when done.
    """

    def __init__(self, running: RunningApp) -> None:
        super().__init__(running.runtime, running.runtime.graph.ingress)
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
        ingress must keep its name.
        """
        self._running.update(app)

    def get_handle(self, deployment: str) -> DeploymentHandle:
        """A handle to another deployment of the app, by its name in the graph."""
        return self._running.runtime.handle(deployment)

    def __enter__(self) -> AppHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def run(
    app: Application,
    *,
    backend: Backend = "local",
    address: str | None = None,
    start_timeout_s: float | None = None,
    isolation: Isolation | None = None,
    gpus: str | None = None,
) -> AppHandle:
    """Start `app` and return its ingress handle (no HTTP).

    Works in plain scripts and inside a running event loop (Jupyter): calls go through the
    app's own event-loop thread. `await handle.method(x)` from async code,
    `handle.method(x).result()` from sync code. Stop it with `handle.shutdown()` or
    `with servekit.run(app) as handle:`.

    `backend="local"` (the default) runs the replicas on this machine. `isolation` sets where
    replicas of deployments that do not choose run: "in_process" (the default) or "process" (a
    worker process each). `gpus` declares the GPU ids to plan with (like "0,1"), overriding
    detection and `SERVEKIT_GPUS`.

    `backend="ray"` runs the same app on Ray Serve: on the cluster at `address` (like "auto" or
    "ray://head:10001"; default ``RAY_ADDRESS``), which keeps running after `shutdown()`, or, with
    neither, on a local Ray that servekit starts for the app and stops with it.

    `start_timeout_s` bounds the start on either backend: past it the app is stopped and
    `DeploymentStartError` raised (on Ray it defaults to 600 s, for clusters that autoscale).
    """
    runtime = make_runtime(
        build_graph(app),
        backend=backend,
        address=address,
        isolation=isolation,
        gpus=gpus,
        start_timeout_s=start_timeout_s,
    )
    return AppHandle(RunningApp(runtime))
