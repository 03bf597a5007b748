"""`JobService`: the queue runner. Claims jobs from a `JobStore` under a lease and runs them.

In: `NewJob`s from the edge or a handle, executors (one per job kind) that run a payload and
describe a failure. Out: job records and results in the store, webhooks. Each server (or Ray
ingress replica) runs one; servers sharing a store share its queue, and a lease (renewed while a
job runs) keeps a job on one server at a time. A server that dies leaves leases that expire:
another server, or the same one restarted, runs those jobs again (at-least-once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from servekit._replica.jobs.context import JobContext, enter_job, exit_job
from servekit._replica.jobs.records import JobRecord, JobResult, NewJob, retry_delay_s, should_retry
from servekit._replica.jobs.store import JobStore
from servekit._replica.jobs.webhook import deliver, webhook_secret
from servekit.errors import JobNotFoundError, JobNotReadyError

logger = logging.getLogger("servekit.jobs")
T = TypeVar("T")
LEASE_VARIABLE = "SERVEKIT_JOBS_LEASE_S"
"""Overrides the default lease (seconds): how long a dead server's running jobs wait to run again."""
DEFAULT_LEASE_S = 30.0
MAX_LIST = 1000


@dataclass(frozen=True)
class Failure:
    """How a failed attempt is reported: the response a client gets, and whether to try again."""

    status: int
    error: dict[str, Any]
    retryable: bool


@dataclass(frozen=True)
class Executor:
    """Runs jobs of one kind: `run` turns a payload into a result, `describe` an error into a `Failure`."""

    run: Callable[[JobRecord, bytes], Awaitable[JobResult]]
    describe: Callable[[BaseException], Failure]


def default_lease_s() -> float:
    """The lease: ``SERVEKIT_JOBS_LEASE_S`` when set, else 30 s."""
    return float(os.environ.get(LEASE_VARIABLE, DEFAULT_LEASE_S))


class JobService:
    """Queues, runs, retries, cancels and reports async jobs kept in a `JobStore`."""

    def __init__(
        self,
        store: JobStore,
        *,
        lease_s: float | None = None,
        poll_s: float = 0.2,
        max_running: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.owner = uuid.uuid4().hex
        self.lease_s = default_lease_s() if lease_s is None else lease_s
        self._poll_s = poll_s
        self._max_running = max_running
        self._clock = clock
        self._executors: dict[str, Executor] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="servekit-jobs")
        self._running: dict[str, tuple[asyncio.Task[None], JobRecord]] = {}
        self._discarded: set[str] = set()
        self._finished: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def register(self, kind: str, executor: Executor) -> None:
        """Run jobs of `kind` with `executor` (replacing any before); only registered kinds are claimed."""
        self._executors[kind] = executor
        if self._wake is not None:
            self._wake.set()

    @property
    def started(self) -> bool:
        """Whether `start()` ran."""
        return self._loop is not None

    async def start(self) -> None:
        """Start claiming and running jobs on the running event loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="servekit-jobs-claim"),
            asyncio.create_task(self._lease_loop(), name="servekit-jobs-lease"),
        ]

    async def stop(self) -> None:
        """Stop claiming; running jobs are interrupted and queued again (they run again on a restart)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        running = [task for task, _ in self._running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._db(self.store.close)
        self._pool.shutdown(wait=True)

    async def _db(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def submit(self, job: NewJob) -> tuple[JobRecord, bool]:
        """Store `job` (or find the live one with its idempotency key); True when stored now."""
        record, created = await self._db(self.store.submit, job, self._clock())
        if created and self._wake is not None:
            self._wake.set()
        return record, created

    async def get(self, job_id: str) -> JobRecord:
        """The job `job_id`; raises `JobNotFoundError` when unknown or expired."""
        record = await self._db(self.store.get, job_id, self._clock())
        if record is None:
            raise JobNotFoundError(f"no job has the id {job_id!r} (it never existed, or its result expired)")
        return record

    async def list_jobs(self, state: str | None, limit: int, after: int) -> list[JobRecord]:
        """Live jobs (of `state`) after the cursor `after`, oldest first."""
        return await self._db(self.store.list, state, min(limit, MAX_LIST), after, self._clock())

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job: a running task here is cancelled (a thread's result discarded)."""
        record = await self._db(self.store.cancel, job_id, self._clock())
        if record is None:
            raise JobNotFoundError(f"no job has the id {job_id!r} (it never existed, or its result expired)")
        self._abandon(job_id)
        return record

    async def result(self, job_id: str) -> tuple[JobRecord, JobResult]:
        """A finished job's result (a failed job's is its error response); 409 before it succeeds."""
        record = await self.get(job_id)
        if record.state in ("succeeded", "failed"):
            result = await self._db(self.store.result, job_id)
            if result is not None:
                return record, result
        raise JobNotReadyError(f"job {job_id!r} has no result: it is {record.state}", record.state)

    async def wait(self, job_id: str, poll_s: float = 0.2) -> JobRecord:
        """Wait until `job_id` finishes (here or on another server sharing the store)."""
        event = self._finished.setdefault(job_id, asyncio.Event())
        while True:
            record = await self.get(job_id)
            if record.finished:
                return record
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), poll_s)

    def _abandon(self, job_id: str) -> None:
        entry = self._running.get(job_id)
        if entry is not None:
            self._discarded.add(job_id)
            entry[0].cancel()
        self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()

    def _busy_targets(self) -> list[str]:
        counts: dict[str, tuple[int, int]] = {}
        for _, record in self._running.values():
            count, _limit = counts.get(record.target, (0, record.concurrency))
            counts[record.target] = (count + 1, record.concurrency)
        return [target for target, (count, limit) in counts.items() if count >= limit]

    async def _claim_loop(self) -> None:
        assert self._wake is not None
        while True:
            record = None
            if len(self._running) < self._max_running:
                try:
                    record = await self._db(
                        self.store.claim,
                        self.owner,
                        list(self._executors),
                        self._busy_targets(),
                        self._clock(),
                        self.lease_s,
                    )
                except Exception:
                    logger.exception("claiming a job failed; retrying")
            if record is not None:
                task = asyncio.create_task(self._run(record), name=f"servekit-job-{record.id}")
                self._running[record.id] = (task, record)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _lease_loop(self) -> None:
        """Renew the leases of running jobs; cancel those lost (cancelled elsewhere); expire old ones."""
        last_sweep = 0.0
        while True:
            await asyncio.sleep(self.lease_s / 3)
            now = self._clock()
            try:
                lost = await self._db(self.store.renew, self.owner, list(self._running), now, self.lease_s)
                for job_id in lost:
                    self._abandon(job_id)
                if now - last_sweep > 60:
                    last_sweep = now
                    await self._db(self.store.sweep, now)
            except Exception:
                logger.exception("renewing job leases failed; retrying")

    async def _run(self, record: JobRecord) -> None:
        try:
            await self._attempt(record)
        except asyncio.CancelledError:
            if record.id not in self._discarded and self._stopping:
                await asyncio.shield(self._requeue_interrupted(record))
        finally:
            self._running.pop(record.id, None)
            self._discarded.discard(record.id)
            if self._wake is not None:
                self._wake.set()

    async def _requeue_interrupted(self, record: JobRecord) -> None:
        error = {"type": "interrupted", "message": "the server stopped during the attempt"}
        with contextlib.suppress(Exception):
            await self._db(self.store.retry, record.id, self.owner, error, self._clock(), self._clock())

    async def _attempt(self, record: JobRecord) -> None:
        executor = self._executors[record.kind]
        payload = await self._db(self.store.payload, record.id)
        token = enter_job(JobContext(record.id, record.attempts, self._reporter(record.id)))
        try:
            result = await executor.run(record, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(record, executor.describe(exc))
            return
        finally:
            exit_job(token)
        finished = await self._db(self.store.finish, record.id, self.owner, self._clock(), result)
        self._done(finished)

    async def _failed(self, record: JobRecord, failure: Failure) -> None:
        now = self._clock()
        if should_retry(record.attempts, record.max_attempts, failure.retryable):
            settings = record.settings
            delay = retry_delay_s(
                record.attempts, settings.get("backoff_s", 1.0), settings.get("max_backoff_s", 300.0)
            )
            await self._db(self.store.retry, record.id, self.owner, failure.error, now + delay, now)
            return
        body = json.dumps({"error": failure.error}).encode()
        result = JobResult(failure.status, "application/json", body)
        finished = await self._db(self.store.finish, record.id, self.owner, now, result, failure.error)
        self._done(finished)

    def _done(self, record: JobRecord | None) -> None:
        if record is None:  # cancelled while it ran: its result is discarded
            return
        self._notify(record.id)
        if record.webhook_url:
            task = asyncio.create_task(self._webhook(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _webhook(self, record: JobRecord) -> None:
        body = json.dumps(record.to_dict()).encode()
        secret = webhook_secret(record.settings.get("webhook_secret"))
        attempts = int(record.settings.get("webhook_attempts", 5))
        assert record.webhook_url is not None
        await deliver(record.webhook_url, body, secret, attempts=attempts)

    def _reporter(self, job_id: str) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            # queued on the store's one thread, so it lands before the job's own finish
            self._pool.submit(self._write_progress, job_id, fraction)

        return report

    def _write_progress(self, job_id: str, fraction: float) -> None:
        try:
            self.store.progress(job_id, self.owner, fraction, self._clock())
        except Exception:
            logger.warning("recording progress of job %s failed", job_id, exc_info=True)


def new_job_id() -> str:
    """A fresh job id (URL-safe, sortable enough to read)."""
    return uuid.uuid4().hex


class JobSlot:
    """Holds an app's `JobService`, made on first use on the app's loop (or at start when durable).

    `location` is where its store is (`open_store`): a data directory, a `postgresql://` URL,
    or None for an in-memory store. `on_create` registers executors on a new service.
    """

    def __init__(self, location: str | None, on_create: Callable[[JobService], None] | None = None) -> None:
        self.location = location
        self._on_create = on_create
        self._executors: dict[str, Executor] = {}
        self._service: JobService | None = None
        self._lock: asyncio.Lock | None = None

    def register(self, kind: str, executor: Executor) -> None:
        """Run jobs of `kind` with `executor`, on the service now and on any made later."""
        self._executors[kind] = executor
        if self._service is not None:
            self._service.register(kind, executor)

    @property
    def current(self) -> JobService | None:
        """The service, when made."""
        return self._service

    async def service(self) -> JobService:
        """The started service, made now if needed; raises `JobStoreError` when its store cannot be used."""
        if self._service is not None:
            return self._service
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._service is None:
                from servekit._replica.jobs.store import open_store  # noqa: PLC0415

                store = await asyncio.to_thread(open_store, self.location)
                service = JobService(store)
                if self._on_create is not None:
                    self._on_create(service)
                for kind, executor in self._executors.items():
                    service.register(kind, executor)
                await service.start()
                self._service = service
        return self._service

    async def close(self) -> None:
        """Stop the service, if made (running jobs are queued again)."""
        service, self._service = self._service, None
        if service is not None:
            await service.stop()
