"""Async jobs from Python: `handle.method.submit(...)` stores a job and returns a `Job`.

The "python" job kind: the payload is the pickled call (deployment, method, args, kwargs), run
through the app's runtime; the result is the pickled return value (`PICKLE_TYPE`), which the
HTTP edge renders as the endpoint would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any

import cloudpickle

from servekit._replica.jobs.records import JobRecord, JobResult, NewJob
from servekit._replica.jobs.service import Executor, Failure, JobService, JobSlot, new_job_id
from servekit._runtime.handle import Dispatcher
from servekit._spec.endpoint import endpoint_spec
from servekit._spec.graph import AppGraph
from servekit._spec.jobs import JobOptions
from servekit.errors import JobFailedError, RequestError, ServekitError, UserCodeError

PYTHON_KIND = "python"
PICKLE_TYPE = "application/vnd.servekit.pickle"


def new_job(
    kind: str,
    target: str,
    payload: bytes,
    options: JobOptions,
    idempotency_key: str | None = None,
) -> NewJob:
    """A `NewJob` carrying `options` (kept with the job, so a restarted server applies them)."""
    settings: dict[str, Any] = {
        "backoff_s": options.backoff_s,
        "max_backoff_s": options.max_backoff_s,
        "webhook_attempts": options.webhook_attempts,
    }
    if options.webhook_secret is not None:
        settings["webhook_secret"] = options.webhook_secret
    return NewJob(
        id=new_job_id(),
        kind=kind,
        target=target,
        payload=payload,
        priority=options.priority,
        max_attempts=options.retries + 1,
        concurrency=options.concurrency,
        max_queued=options.max_queued,
        result_ttl_s=options.result_ttl_s,
        idempotency_key=None if idempotency_key is None else f"{target}\n{idempotency_key}",
        webhook_url=options.webhook_url,
        settings=settings,
    )


def describe_failure(exc: BaseException) -> Failure:
    """A failed attempt as a client sees it; the client's own mistakes (4xx) are not retried."""
    if isinstance(exc, ServekitError) and not isinstance(exc, UserCodeError):
        return Failure(exc.status_code, exc.to_dict(), not isinstance(exc, RequestError))
    status = getattr(exc, "status_code", 500)
    status = status if isinstance(status, int) and 400 <= status < 600 else 500
    error = {"type": "internal_error", "message": f"the job failed in user code ({type(exc).__name__})"}
    return Failure(status, error, status >= 500)


def job_options(graph: AppGraph, deployment: str, method: str) -> JobOptions:
    """The `JobOptions` of `method` when it is an `@endpoint` with some, else the defaults."""
    node = graph.nodes.get(deployment)
    func = None if node is None else getattr(node.deployment.target, method, None)
    spec = endpoint_spec(func)
    return JobOptions() if spec is None else spec.jobs


def python_executor(dispatcher: Dispatcher) -> Executor:
    """Runs "python" jobs through `dispatcher` (the app's runtime)."""

    async def run(record: JobRecord, payload: bytes) -> JobResult:
        deployment, method, args, kwargs = cloudpickle.loads(payload)
        value = await dispatcher.call(deployment, method, args, kwargs)
        return JobResult(200, PICKLE_TYPE, cloudpickle.dumps(value))

    return Executor(run, describe_failure)


def register_python_jobs(dispatcher: Dispatcher) -> Any:
    """An `on_create` for a `JobSlot` that makes the service run "python" jobs through `dispatcher`."""

    def on_create(service: JobService) -> None:
        service.register(PYTHON_KIND, python_executor(dispatcher))

    return on_create


class Job:
    """An async job submitted from Python: `job.id`, `job.status()`, `await job`, `job.result()`."""

    def __init__(
        self, slot: JobSlot, loop: asyncio.AbstractEventLoop, stored: concurrent.futures.Future[str]
    ):
        self._slot = slot
        self._loop = loop
        self._stored = stored

    @property
    def id(self) -> str:
        """The job's id (as in `/-/jobs/{id}`); waits until the job is stored."""
        return self._stored.result()

    def status(self) -> dict[str, Any]:
        """The job's status document: state, attempts, timestamps, progress (as `/-/jobs/{id}`)."""
        status: dict[str, Any] = self._blocking(self._status())
        return status

    def cancel(self) -> dict[str, Any]:
        """Cancel the job (a running attempt is cancelled); returns its status document."""
        status: dict[str, Any] = self._blocking(self._cancel())
        return status

    def result(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return its result; raises `JobFailedError` if it failed."""
        return self._blocking(self._result(), timeout)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._result(), self._loop)).__await__()

    def _blocking(self, coro: Any, timeout: float | None = None) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("this would block the event loop; use 'await job' on the app's loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _job_id(self) -> str:
        return await asyncio.wrap_future(self._stored)

    async def _status(self) -> dict[str, Any]:
        service = await self._slot.service()
        return (await service.get(await self._job_id())).to_dict()

    async def _cancel(self) -> dict[str, Any]:
        service = await self._slot.service()
        return (await service.cancel(await self._job_id())).to_dict()

    async def _result(self) -> Any:
        service = await self._slot.service()
        job_id = await self._job_id()
        record = await service.wait(job_id)
        if record.state != "succeeded":
            raise JobFailedError(f"job {job_id!r} {record.state}", record.error)
        _, result = await service.result(job_id)
        return cloudpickle.loads(result.body) if result.media_type == PICKLE_TYPE else result.body

    def __repr__(self) -> str:
        return f"Job(id={self.id!r})"


def submit_call(
    slot: JobSlot,
    graph: AppGraph,
    loop: asyncio.AbstractEventLoop,
    call: tuple[str, str, tuple[Any, ...], dict[str, Any]],
) -> Job:
    """Store `call` (deployment, method, args, kwargs) as a "python" job; from sync code, once stored."""
    deployment, method = call[0], call[1]
    options = job_options(graph, deployment, method)
    job = new_job(PYTHON_KIND, f"{deployment}.{method}", cloudpickle.dumps(call), options)

    async def store() -> str:
        service = await slot.service()
        record, _ = await service.submit(job)
        return record.id

    future = asyncio.run_coroutine_threadsafe(store(), loop)
    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False
    if not on_loop:
        future.result()  # stored (or refused: a full queue raises here) before submit returns
    return Job(slot, loop, future)
