"""`ProcessReplica`: the server's side of a replica that runs in a worker process.

It has the interface of the in-process `Replica` (start, call, stream, check_health, stop), so
the replica set, the controller and the HTTP edge do not care where a replica runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import cloudpickle

from servekit._replica.context import ReplicaContext
from servekit._replica.multiplex import route_by_model_id
from servekit._replica.request_context import outgoing_request, set_request
from servekit._runtime.local.workers import codec
from servekit._runtime.local.workers.calls import OutgoingCalls
from servekit._runtime.local.workers.messages import (
    Cancel,
    Cancelled,
    Chunk,
    ConfigureBatching,
    End,
    HandleRequest,
    Init,
    Probe,
    ProbeResult,
    RecordOutcomes,
    Reply,
    Request,
    Started,
    StartFailed,
    Stop,
    Undecodable,
)
from servekit._spec.config import BatchOptions
from servekit._telemetry.logs import LogFormat, json_line
from servekit._telemetry.tracing import TracingSettings
from servekit.errors import DeploymentStartError, ReplicaDiedError

logger = logging.getLogger("servekit.runtime")


class HandleServer(Protocol):
    """What a process replica needs to serve its user code's handle calls: the runtime."""

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method of `deployment`."""
        ...

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method of `deployment`."""
        ...


class ProcessReplica:
    """A replica in its own worker process, reached over a socket pair."""

    def __init__(
        self,
        context: ReplicaContext,
        target: Any,
        is_function: bool,
        *,
        runtime: HandleServer,
        methods: dict[str, dict[str, bool]],
        env: dict[str, str] | None = None,
        gpu_fraction: float = 1.0,
        cpu_ids: tuple[int, ...] | None = None,
        max_threads: int = 8,
        batching: Mapping[str, BatchOptions] | None = None,
        tracing: TracingSettings | None = None,
        log_format: LogFormat | None = None,
    ) -> None:
        self.context = context
        self._tracing = tracing
        self._log_format = log_format
        self._target = target
        self._is_function = is_function
        self._runtime = runtime
        self._methods = methods
        self._env = env or {}
        self._gpu_fraction = gpu_fraction
        self._cpu_ids = cpu_ids
        self._max_threads = max_threads
        self._batching = dict(batching or {})
        self._process: asyncio.subprocess.Process | None = None
        self._link: codec.FrameProtocol | None = None
        self._outgoing = OutgoingCalls(self._send)
        self._served: dict[int, asyncio.Task[None]] = {}
        self._notes: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Future[Started | StartFailed] | None = None
        self._log_tasks: list[asyncio.Task[None]] = []
        self._stats: dict[str, dict[str, Any]] = {}
        self._models: dict[str, Any] | None = None
        self._metrics: list[Any] = []
        self.death: asyncio.Future[str] | None = None
        """Resolves with a description when the worker process exits or the link breaks."""
        self.on_death: Callable[[ProcessReplica, str], None] | None = None
        self.abandoned = 0
        """Calls cancelled here that still run in the worker (sync code: until its thread returns)."""
        self.abandoned_total = 0
        self._abandoned_watchers: list[Callable[[], None]] = []

    @property
    def instance(self) -> Any:
        """Process replicas have no instance in the server process."""
        raise RuntimeError(
            f"replica {self.context.replica_id} runs in a worker process; an ingress that needs its "
            "instance in the server (an ASGI app or a raw __call__(request)) must be isolation='in_process'"
        )

    @property
    def pid(self) -> int | None:
        """The worker's process id."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """Whether the worker runs and its link is up."""
        return self.death is not None and not self.death.done()

    async def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Start the worker and build the user's instance there; raises `DeploymentStartError`."""
        loop = asyncio.get_running_loop()
        self.death = loop.create_future()
        self._started = loop.create_future()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "servekit._runtime.local.workers.worker",
                str(child.fileno()),
                str(os.getpid()),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **self._env},
            )
        finally:
            child.close()
        link = codec.FrameProtocol(self._on_message, self._on_lost)
        await loop.connect_accepted_socket(lambda: link, parent)
        self._link = link
        self._log_tasks = [
            loop.create_task(self._forward_output(self._process.stdout, "stdout")),
            loop.create_task(self._forward_output(self._process.stderr, "stderr")),
        ]
        self._log_tasks.append(loop.create_task(self._watch_exit(self._process)))
        try:
            link.send(self._init_message(args, kwargs))
        except Exception as exc:
            await self._kill()
            raise DeploymentStartError(
                f"deployment {self.context.deployment!r}: cannot send the deployment to a worker "
                f"process: {type(exc).__name__}: {exc}"
            ) from exc
        waits: list[asyncio.Future[Any]] = [self._started, self.death]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        started = self._started.result() if self._started.done() else None
        if isinstance(started, Started):
            return
        await self._kill()
        if isinstance(started, StartFailed):
            raise DeploymentStartError(
                f"deployment {self.context.deployment!r}: replica {self.context.replica_id} failed to "
                f"start: {_describe(started.error)}\n{started.traceback.rstrip()}"
            ) from started.error
        reason = self.death.result() if self.death.done() else "unknown"
        raise DeploymentStartError(
            f"deployment {self.context.deployment!r}: replica {self.context.replica_id} failed to "
            f"start: the worker process {reason}"
        )

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], model_id: str | None = None
    ) -> Any:
        """Run a unary method in the worker (serving multiplexed `model_id`) and return its result."""
        context = outgoing_request()
        return await self._outgoing.call(
            lambda key: Request(key, method, args, kwargs, False, context, model_id)
        )

    def stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], model_id: str | None = None
    ) -> AsyncIterator[Any]:
        """Run a generator method in the worker and yield its chunks."""
        context = outgoing_request()
        return self._outgoing.stream(lambda key: Request(key, method, args, kwargs, True, context, model_id))

    def is_streaming(self, method: str) -> bool:
        """Whether `method` is a generator method."""
        from servekit._replica.replica import method_kind, user_method  # noqa: PLC0415

        return method_kind(user_method(self._target, self._is_function, method)).streaming

    def watch_abandoned(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `abandoned` changes."""
        self._abandoned_watchers.append(callback)

    def batch_stats(self) -> dict[str, dict[str, Any]]:
        """Batch stats as of the last probe."""
        return self._stats

    def model_status(self) -> dict[str, Any] | None:
        """The worker's bound models as of the last probe (None: none bound, or not probed yet)."""
        return self._models

    def metric_families(self) -> list[Any]:
        """The worker's batch queues and user metrics as of the last probe (prometheus_client families)."""
        return self._metrics

    async def configure_batching(self, options: Mapping[str, BatchOptions]) -> None:
        """Apply per-method batch option overrides in the worker, in place (see `Replica`)."""
        await self._outgoing.call(lambda key: ConfigureBatching(key, dict(options)))
        self._batching = dict(options)

    async def check_health(self) -> None:
        """Run the user's `check_health()` in the worker; raises if unhealthy or gone."""
        await self.probe(health=True)

    async def probe(self, health: bool) -> None:
        """Refresh batch stats, and with `health` run the health check."""
        result: ProbeResult = await self._outgoing.call(lambda key: Probe(key, health))
        self._stats = result.batch_stats
        self._models = result.models
        self._metrics = result.metrics or []
        if result.error is not None:
            raise result.error

    def stop(self) -> None:
        """Ask the worker to exit (it has drained); a worker that lingers is killed by `aclose`."""
        with contextlib.suppress(ConnectionError, ReplicaDiedError):
            self._send(Stop())

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop the worker and wait for it: Stop, then SIGTERM, then SIGKILL."""
        process = self._process
        if process is None:
            return
        self.stop()
        for escalate in (None, signal.SIGTERM, signal.SIGKILL):
            if escalate is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(escalate)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout_s)
                break
        for task in self._log_tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 1.0)
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()

    def kill(self) -> None:
        """SIGKILL the worker now (used by the controller for a hung replica)."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    # -- internals ----------------------------------------------------------------------------
    def _init_message(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Init:
        return Init(
            context=self.context,
            target=cloudpickle.dumps(self._target, protocol=5),
            is_function=self._is_function,
            init_args=cloudpickle.dumps((args, kwargs), protocol=5),
            sys_path=[path for path in sys.path if path],
            methods=self._methods,
            gpu_fraction=self._gpu_fraction,
            cpu_ids=self._cpu_ids,
            max_threads=self._max_threads,
            batching=self._batching,
            tracing=self._tracing,
            log_format=self._log_format,
        )

    def _send(self, message: Any) -> None:
        link = self._link
        if link is None or not self.alive:
            raise self._died_error()
        try:
            link.send(message)
        except ConnectionError:
            raise self._died_error() from None
        if isinstance(message, Cancel):  # the worker answers `Cancelled` once the call has stopped
            self._count_abandoned(+1)

    def _count_abandoned(self, delta: int) -> None:
        self.abandoned = max(0, self.abandoned + delta)
        if delta > 0:
            self.abandoned_total += delta
        for watcher in self._abandoned_watchers:
            watcher()

    def _on_message(self, message: Any) -> None:
        match message:
            case Reply() | Chunk() | End() | ProbeResult():
                self._outgoing.answer(message)
            case HandleRequest():
                task = asyncio.get_running_loop().create_task(self._serve_handle(message))
                self._served[message.id] = task
                task.add_done_callback(functools.partial(self._forget_served, message.id))
            case Cancelled() | RecordOutcomes():
                self._on_note(message)
            case Cancel(id=key):
                served = self._served.get(key)
                if served is not None:
                    served.cancel()
            case Started() | StartFailed():
                if self._started is not None and not self._started.done():
                    self._started.set_result(message)
            case Undecodable(id=key, starts_exchange=starts, error=error):
                self._on_undecodable(key, starts, error)
            case _:
                logger.error("replica %s sent an unexpected %r", self.context.replica_id, message)

    def _on_note(self, message: Cancelled | RecordOutcomes) -> None:
        """A message that needs no answer: a cancelled call stopped, or outcomes to credit."""
        if isinstance(message, Cancelled):
            self._count_abandoned(-1)
            return
        routers = getattr(self._runtime, "routers", None)
        if routers is None:
            return
        for outcome, value in message.outcomes:
            task = asyncio.get_running_loop().create_task(
                routers.post_outcome(None, message.request_id, outcome, value)
            )
            self._notes.add(task)
            task.add_done_callback(self._notes.discard)

    def _on_undecodable(self, key: int, starts: bool, error: BaseException) -> None:
        """Fail only the call whose message could not be decoded here."""
        where = f"deployment {self.context.deployment!r}: replica {self.context.replica_id}"
        if starts:  # a handle call from the worker's user code
            self._send_answer(Reply(key, False, TypeError(f"{where}: handle call refused: {error}")))
        elif key >= 0:  # the answer to one of our calls
            self._outgoing.answer(Reply(key, False, TypeError(f"{where}: the result is unusable: {error}")))
        elif self._started is not None and not self._started.done():
            self._started.set_result(StartFailed(RuntimeError(str(error)), ""))
        else:
            logger.error("%s sent a message that could not be decoded: %s", where, error)

    def _forget_served(self, key: int, task: asyncio.Task[None]) -> None:
        self._served.pop(key, None)

    async def _serve_handle(self, request: HandleRequest) -> None:
        """Run a call that user code in the worker made through a handle, and send the answer."""
        if request.context is not None:
            set_request(request.context)  # this task's own context: the routers on its path see it
        route_by_model_id(request.model_id)  # and the model id, for the runtime's routing
        try:
            if request.stream:
                chunks = self._runtime.stream(
                    request.deployment, request.method, request.args, request.kwargs
                )
                async for chunk in chunks:
                    self._send_answer(Chunk(request.id, chunk))
                    if self._link is not None:
                        await self._link.drain()
                self._send_answer(End(request.id))
            else:
                result = await self._runtime.call(
                    request.deployment, request.method, request.args, request.kwargs
                )
                self._send_answer(Reply(request.id, True, result))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._send_answer(Reply(request.id, False, exc))

    def _send_answer(self, message: Reply | Chunk | End) -> None:
        try:
            self._send(message)
        except ReplicaDiedError:
            return
        except Exception as exc:
            error = TypeError(f"the answer cannot be sent to the worker: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self._send(Reply(message.id, False, error))

    def _on_lost(self, exc: BaseException | None) -> None:
        reason = "closed its connection" if exc is None else f"lost its connection ({exc})"
        process = self._process
        if process is None or process.returncode is not None:
            self._mark_dead(reason)
            return
        # The socket closes a moment before the exit is reaped: wait briefly for the real cause.
        asyncio.get_running_loop().create_task(self._dead_after(process, reason))

    async def _dead_after(self, process: asyncio.subprocess.Process, reason: str) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), 0.5)
        if process.returncode is None:
            self.kill()
        self._mark_dead(reason)  # a no-op when _watch_exit got there first with the exit code

    async def _watch_exit(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        reason = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        self._mark_dead(reason)

    def _mark_dead(self, reason: str) -> None:
        death = self.death
        if death is None or death.done():
            return
        death.set_result(reason)
        if self.abandoned:
            self._count_abandoned(-self.abandoned)
        self._outgoing.fail_all(self._died_error())
        for task in list(self._served.values()):
            task.cancel()
        if self.on_death is not None:
            self.on_death(self, reason)

    def _died_error(self) -> ReplicaDiedError:
        reason = self.death.result() if self.death is not None and self.death.done() else "is not running"
        return ReplicaDiedError(
            f"deployment {self.context.deployment!r}: replica {self.context.replica_id} "
            f"(pid {self.pid}) {reason}; the request was not completed"
        )

    async def _forward_output(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        prefix = f"({self.context.replica_id} pid={self.pid}) "
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            line_out = self._as_json(text, name) if self._log_format == "json" else prefix + text
            sys.stderr.write(line_out + "\n")
        with contextlib.suppress(ValueError):
            sys.stderr.flush()

    def _as_json(self, text: str, stream: str) -> str:
        """A worker's output line as a JSON log line: its own log records as they are, any other
        output (a print, a traceback) wrapped in one."""
        if text.startswith("{") and text.endswith("}"):
            return text
        context = self.context
        return json_line(
            text,
            logger=f"servekit.worker.{stream}",
            deployment=context.deployment,
            replica=context.replica_id,
        )

    async def _kill(self) -> None:
        self.kill()
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), 5.0)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
