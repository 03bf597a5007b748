"""The worker process: hosts one replica and serves the server's requests over a socket.

Started as ``python -m servekit._runtime.local.workers.worker FD`` with one end of a socket
pair. It exits when the server says `Stop`, and on its own when the server goes away (the
socket closes, or the parent dies), so a crashed server leaves no workers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from servekit._replica import metrics as user_metrics
from servekit._replica.batch_metrics import batch_families
from servekit._replica.context import ReplicaContext
from servekit._replica.multiplex import outgoing_model_id
from servekit._replica.replica import Replica
from servekit._replica.request_context import log_fields, outgoing_request, set_request
from servekit._runtime.handle import DeploymentHandle
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
from servekit._spec.graph import with_handles
from servekit._telemetry import tracing
from servekit._telemetry.logs import configure_logging
from servekit.errors import DeploymentUnavailableError, NotFoundError

logger = logging.getLogger("servekit.worker")
_PR_SET_PDEATHSIG = 1


class Worker:
    """Runs one replica and the calls the server sends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.link = codec.FrameProtocol(self._on_message, self._on_lost)
        self.replica: Replica | None = None
        self.done = loop.create_future()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._outgoing = OutgoingCalls(self._send_or_fail)
        self._methods: dict[str, dict[str, bool]] = {}
        self._executor: ThreadPoolExecutor | None = None

    # -- server -> worker ------------------------------------------------------------------
    def _on_message(self, message: Any) -> None:
        match message:
            case Request():
                task = self.loop.create_task(self._serve(message))
                self._tasks[message.id] = task
                task.add_done_callback(functools.partial(self._forget, message.id))
            case Cancel(id=key):
                self._cancel(key)
            case Reply() | Chunk() | End():
                self._outgoing.answer(message)
            case Probe():
                self.loop.create_task(self._probe(message))
            case ConfigureBatching():
                self.loop.create_task(self._configure_batching(message))
            case Init():
                self.loop.create_task(self._start(message))
            case Stop():
                self._finish()
            case Undecodable(id=key, starts_exchange=starts, error=error):
                self._on_undecodable(key, starts, error)
            case _:
                logger.error("unexpected message %r", type(message).__name__)

    def _on_undecodable(self, key: int, starts: bool, error: BaseException) -> None:
        """Fail only the call whose message could not be decoded in this worker."""
        if starts:  # a request from the server: its arguments cannot be loaded here
            self._send(Reply(key, False, TypeError(f"the arguments cannot be used in the worker: {error}")))
        elif key >= 0:  # the answer to one of this worker's handle calls
            self._outgoing.answer(Reply(key, False, error))
        else:  # the Init message: the deployment cannot be loaded here
            self._send(StartFailed(RuntimeError(str(error)), ""))

    def _cancel(self, key: int) -> None:
        """Cancel request `key`; say `Cancelled` once it runs no more (sync code: its thread returned)."""
        running = self._tasks.get(key)
        if running is None:
            self._send(Cancelled(key))
            return
        running.cancel()
        running.add_done_callback(lambda _: self._send(Cancelled(key)))

    def _forget(self, key: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)

    def _on_lost(self, exc: BaseException | None) -> None:
        self._outgoing.fail_all(DeploymentUnavailableError("the server is gone"))
        self._finish()

    def _finish(self) -> None:
        if self.replica is not None:
            self.replica.stop()
        if not self.done.done():
            self.done.set_result(None)

    async def _start(self, init: Init) -> None:
        for path in reversed(init.sys_path):
            if path not in sys.path:
                sys.path.insert(0, path)
        self._methods = init.methods
        context = init.context
        configure_logging(
            init.log_format or "text",
            log_fields,
            deployment=context.deployment,
            replica=context.replica_id,
            timestamps=init.log_format == "json",
        )
        if init.tracing is not None:
            try:
                tracing.start_tracing(init.tracing)
            except ImportError as exc:
                self._send(StartFailed(RuntimeError(str(exc)), ""))
                return
        _apply_placement(init)
        self._executor = ThreadPoolExecutor(init.max_threads, thread_name_prefix="servekit-replica")
        try:
            target = cloudpickle.loads(init.target)
            args, kwargs = cloudpickle.loads(init.init_args)
            make_handle = functools.partial(DeploymentHandle, self)
            args, kwargs = with_handles(args, make_handle), with_handles(kwargs, make_handle)
            replica = Replica(init.context, target, init.is_function, self._executor, init.batching)
            await replica.start(args, kwargs)
        except BaseException as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            text = "".join(traceback.format_exception(cause))
            self._send(StartFailed(_portable(exc), text))
            return
        self.replica = replica
        gc.freeze()  # the model and everything built at start-up: keep it out of every GC pass
        self._send(Started(os.getpid()))

    async def _serve(self, request: Request) -> None:
        replica = self.replica
        if replica is None:
            self._send(Reply(request.id, False, DeploymentUnavailableError("the replica is not started")))
            return
        if request.context is not None:
            set_request(request.context)  # this task's own context: the user's code sees the request
        try:
            # A cancelled sync call holds its task until its thread returns: only then does the
            # server hear `Cancelled` and free the call's slot there.
            call = (request.method, request.args, request.kwargs)
            if request.stream:
                chunks = replica.stream(*call, hold_abandoned=True, model_id=request.model_id)
                async for chunk in chunks:
                    self._send(Chunk(request.id, chunk))
                    await self.link.drain()
                self._send(End(request.id))
            else:
                result = await replica.call(*call, hold_abandoned=True, model_id=request.model_id)
                self._send(Reply(request.id, True, result))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._send(Reply(request.id, False, exc))
        finally:
            if request.context is not None and request.context.outcomes:
                self._send(RecordOutcomes(request.context.request_id, list(request.context.outcomes)))

    async def _probe(self, probe: Probe) -> None:
        error: BaseException | None = None
        replica = self.replica
        if replica is None:
            error = DeploymentUnavailableError("the replica is not started")
        elif probe.health:
            try:
                await replica.check_health()
            except Exception as exc:
                error = exc
        stats = replica.batch_stats() if replica is not None else {}
        models = replica.model_status() if replica is not None else None
        metrics = (batch_families(replica) if replica is not None else []) + user_metrics.collect()
        self._send(ProbeResult(probe.id, error, stats, models, metrics))

    async def _configure_batching(self, message: ConfigureBatching) -> None:
        replica = self.replica
        try:
            if replica is None:
                raise DeploymentUnavailableError("the replica is not started")
            await replica.configure_batching(message.batching)
        except Exception as exc:
            self._send(Reply(message.id, False, exc))
            return
        self._send(Reply(message.id, True, None))

    def _send(self, message: Any) -> None:
        try:
            self.link.send(message)
        except ConnectionError:
            self._finish()
        except Exception as exc:
            if isinstance(message, Reply | Chunk):
                text = f"{type(exc).__name__}: {exc}"
                error = TypeError(f"the result of the call cannot be sent to the server: {text}")
                self._send(Reply(message.id, False, error))
            elif isinstance(message, StartFailed):
                self._send(StartFailed(RuntimeError(str(message.error)), message.traceback))
            elif isinstance(message, ProbeResult):
                self._send(ProbeResult(message.id, RuntimeError(str(message.error)), {}))
            else:
                raise

    # -- worker -> server: handle calls from user code ---------------------------------------
    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method of another deployment, through the server."""
        context, model_id = outgoing_request(), outgoing_model_id()
        return await self._outgoing.call(
            lambda key: HandleRequest(key, deployment, method, args, kwargs, False, context, model_id)
        )

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method of another deployment, through the server."""
        context, model_id = outgoing_request(), outgoing_model_id()
        return self._outgoing.stream(
            lambda key: HandleRequest(key, deployment, method, args, kwargs, True, context, model_id)
        )

    def is_streaming(self, deployment: str, method: str) -> bool:
        methods = self._methods.get(deployment)
        if methods is None:
            raise NotFoundError(f"no deployment named {deployment!r}; deployments: {sorted(self._methods)}")
        if method not in methods:
            raise NotFoundError(f"deployment {deployment!r} has no public method {method!r}")
        return methods[method]

    def _send_or_fail(self, message: Any) -> None:
        try:
            self.link.send(message)
        except ConnectionError:
            raise DeploymentUnavailableError("the server is gone") from None


def _portable(exc: BaseException) -> BaseException:
    try:
        codec.encode(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _apply_placement(init: Init) -> None:
    from servekit._runtime.local.placement import Placement, apply_placement_in_process  # noqa: PLC0415

    context: ReplicaContext = init.context
    placement = Placement(context.gpu_ids, init.gpu_fraction, init.cpu_ids)
    apply_placement_in_process(placement)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when its parent exits (the socket EOF is the backstop)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


async def _main(fd: int) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(loop)
    sock = socket.socket(fileno=fd)
    await loop.connect_accepted_socket(lambda: worker.link, sock)
    loop.add_signal_handler(signal.SIGTERM, worker._finish)
    await worker.done


def main() -> None:
    """Entry point of a worker process."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C goes to the server, which stops us
    configure_logging("text", log_fields, level=logging.INFO, timestamps=False)  # until `Init` says more
    try:
        import uvloop  # noqa: PLC0415

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_main(fd))
    active = tracing.active()
    if active is not None:  # export the spans still buffered (os._exit skips every atexit hook)
        active.shutdown()
    _save_coverage()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # don't wait for user threads still running sync code


def _save_coverage() -> None:
    """Write coverage data when the test suite measures this worker (os._exit skips atexit)."""
    if "coverage" not in sys.modules:
        return
    import coverage  # noqa: PLC0415

    current = coverage.Coverage.current()
    if current is not None:
        current.stop()
        current.save()


if __name__ == "__main__":
    main()
