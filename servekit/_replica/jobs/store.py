"""Job stores: where jobs, their payloads and results live. SQLite (embedded) or PostgreSQL.

`open_store(location)` picks one: a directory holds an SQLite database in WAL mode (results
over `FILE_RESULT_BYTES` as files beside it); a `postgresql://` URL a PostgreSQL database;
None an in-memory SQLite database that lives as long as the process. Every method is one
transaction and blocking: `JobService` calls them from one thread of its own.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from servekit._replica.jobs.records import JobRecord, JobResult, NewJob
from servekit.errors import JobQueueFullError, JobStoreError

FILE_RESULT_BYTES = 256 * 1024
"""Results larger than this are kept as files beside the SQLite database."""
MIN_FREE_BYTES = 16 * 1024 * 1024
"""A data directory with less free space than this is refused at start (a full disk)."""

_COLUMNS = (
    "id, kind, target, state, priority, attempts, max_attempts, created_at, updated_at, started_at, "
    "finished_at, progress, error, idempotency_key, webhook_url, concurrency, result_ttl_s, settings, "
    "seq, result_status, result_type"
)
_UNFINISHED = "('queued', 'running')"


class JobStore(Protocol):
    """Durable job records; each call is one transaction."""

    def submit(self, job: NewJob, now: float) -> tuple[JobRecord, bool]:
        """Store `job`, or return the live job with its idempotency key; True when stored now.

        Raises `JobQueueFullError`, storing nothing, when its target holds `max_queued` unfinished jobs.
        """
        ...

    def get(self, job_id: str, now: float) -> JobRecord | None:
        """The job, unless unknown or expired."""
        ...

    def list(self, state: str | None, limit: int, after: int, now: float) -> list[JobRecord]:
        """Up to `limit` live jobs (of `state`, if given) with `seq` above `after`, oldest first."""
        ...

    def claim(
        self, owner: str, kinds: Sequence[str], busy: Sequence[str], now: float, lease_s: float
    ) -> JobRecord | None:
        """Start the most urgent runnable job of `kinds` whose target is not in `busy`, leased to `owner`.

        Runnable: queued and due, or running under a lease that expired (its server died).
        """
        ...

    def renew(self, owner: str, job_ids: Sequence[str], now: float, lease_s: float) -> set[str]:
        """Extend `owner`'s leases; returns those of `job_ids` it no longer holds (cancelled, taken)."""
        ...

    def progress(self, job_id: str, owner: str, value: float, now: float) -> None:
        """Record a running job's progress."""
        ...

    def finish(
        self,
        job_id: str,
        owner: str,
        now: float,
        result: JobResult | None = None,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """Mark `owner`'s running job succeeded (with `result`) or failed (with `error`).

        Returns None when the job is no longer `owner`'s (cancelled meanwhile): nothing is written.
        """
        ...

    def retry(self, job_id: str, owner: str, error: dict[str, Any], run_after: float, now: float) -> bool:
        """Queue `owner`'s running job again, due at `run_after`; False when no longer `owner`'s."""
        ...

    def cancel(self, job_id: str, now: float) -> JobRecord | None:
        """Cancel a queued or running job (a finished one stays as it is); None when unknown."""
        ...

    def payload(self, job_id: str) -> bytes:
        """The job's input, as submitted."""
        ...

    def result(self, job_id: str) -> JobResult | None:
        """A succeeded or failed job's result, if it has one."""
        ...

    def sweep(self, now: float) -> int:
        """Delete jobs whose result TTL passed; returns how many."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def open_store(location: str | None) -> JobStore:
    """The store at `location`: a data directory (SQLite), a `postgresql://` URL, or None (memory).

    Raises `JobStoreError` when it cannot be written: a read-only or full directory, a database
    that cannot be reached.
    """
    if location is not None and location.startswith(("postgresql://", "postgres://")):
        from servekit._replica.jobs.postgres import PostgresJobStore  # noqa: PLC0415 (optional extra)

        return PostgresJobStore(location)
    if location is None:
        return SQLiteJobStore(None)
    return SQLiteJobStore(Path(location))


def check_data_dir(path: Path) -> None:
    """Raise `JobStoreError` unless `path` is a writable directory with free space."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".servekit-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise JobStoreError(f"the data directory {str(path)!r} cannot be written: {exc.strerror}") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise JobStoreError(
            f"the data directory {str(path)!r} has {free // 1024} KiB free; the job store needs at "
            f"least {MIN_FREE_BYTES // (1024 * 1024)} MiB"
        )


class SqlJobStore(abc.ABC):
    """The SQL both databases share; subclasses give the connection, transactions and blobs."""

    placeholder = "?"
    skip_locked = ""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside one write transaction."""

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _record(self, row: Sequence[Any]) -> JobRecord:
        (id_, kind, target, state, priority, attempts, max_attempts, created, updated, started,
         finished, progress, error, key, webhook, concurrency, ttl, settings, seq, result_status,
         result_type) = row  # fmt: skip
        return JobRecord(
            id=id_, kind=kind, target=target, state=state, priority=priority, attempts=attempts,
            max_attempts=max_attempts, created_at=created, updated_at=updated, started_at=started,
            finished_at=finished, progress=progress, error=json.loads(error) if error else None,
            idempotency_key=key, webhook_url=webhook, concurrency=concurrency, result_ttl_s=ttl,
            settings=json.loads(settings) if settings else {}, seq=seq, result_status=result_status,
            result_type=result_type,
        )  # fmt: skip

    def _select(self, cur: Any, where: str, params: Sequence[Any]) -> JobRecord | None:
        cur.execute(self._q(f"SELECT {_COLUMNS} FROM servekit_jobs WHERE {where}"), params)
        row = cur.fetchone()
        return None if row is None else self._record(row)

    def _lock_target(self, cur: Any, target: str) -> None:  # noqa: B027  # a hook, no-op by default
        """Serialise submissions to one target (SQLite's write lock does it already)."""

    def submit(self, job: NewJob, now: float) -> tuple[JobRecord, bool]:
        with self.transaction() as cur:
            self._lock_target(cur, job.target)
            if job.idempotency_key is not None:
                live = "idempotency_key = ? AND (expires_at IS NULL OR expires_at > ?)"
                found = self._select(cur, live, (job.idempotency_key, now))
                if found is not None:
                    return found, False
                cur.execute(
                    self._q("DELETE FROM servekit_jobs WHERE idempotency_key = ?"), (job.idempotency_key,)
                )
            cur.execute(
                self._q(f"SELECT COUNT(*) FROM servekit_jobs WHERE target = ? AND state IN {_UNFINISHED}"),
                (job.target,),
            )
            unfinished = cur.fetchone()[0]
            if unfinished >= job.max_queued:
                raise JobQueueFullError(
                    f"the job queue of {job.target!r} is full ({unfinished} unfinished jobs, "
                    f"max_queued={job.max_queued}); retry later",
                    retry_after_s=1.0,
                )
            cur.execute(
                self._q(
                    "INSERT INTO servekit_jobs (id, kind, target, state, priority, attempts, max_attempts, "
                    "created_at, updated_at, run_after, idempotency_key, webhook_url, concurrency, "
                    "result_ttl_s, settings, payload) "
                    "VALUES (?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    job.id, job.kind, job.target, job.priority, job.max_attempts, now, now, now,
                    job.idempotency_key, job.webhook_url, job.concurrency, job.result_ttl_s,
                    json.dumps(job.settings), self._blob(job.payload),
                ),
            )  # fmt: skip
            record = self._select(cur, "id = ?", (job.id,))
        assert record is not None
        return record, True

    def get(self, job_id: str, now: float) -> JobRecord | None:
        with self.transaction() as cur:
            return self._select(cur, "id = ? AND (expires_at IS NULL OR expires_at > ?)", (job_id, now))

    def list(self, state: str | None, limit: int, after: int, now: float) -> list[JobRecord]:
        where = "seq > ? AND (expires_at IS NULL OR expires_at > ?)"
        params: list[Any] = [after, now]
        if state is not None:
            where += " AND state = ?"
            params.append(state)
        with self.transaction() as cur:
            cur.execute(
                self._q(f"SELECT {_COLUMNS} FROM servekit_jobs WHERE {where} ORDER BY seq LIMIT ?"),
                (*params, limit),
            )
            return [self._record(row) for row in cur.fetchall()]

    def claim(
        self, owner: str, kinds: Sequence[str], busy: Sequence[str], now: float, lease_s: float
    ) -> JobRecord | None:
        if not kinds:
            return None
        where = (
            f"kind IN ({', '.join('?' * len(kinds))}) AND "
            "((state = 'queued' AND run_after <= ?) OR (state = 'running' AND lease_until < ?))"
        )
        params: list[Any] = [*kinds, now, now]
        if busy:
            where += f" AND target NOT IN ({', '.join('?' * len(busy))})"
            params += list(busy)
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    f"SELECT id FROM servekit_jobs WHERE {where} ORDER BY priority DESC, seq LIMIT 1"
                    f"{self.skip_locked}"
                ),
                params,
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                self._q(
                    "UPDATE servekit_jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
                    "lease_until = ?, started_at = ?, updated_at = ?, progress = NULL WHERE id = ?"
                ),
                (owner, now + lease_s, now, now, row[0]),
            )
            return self._select(cur, "id = ?", (row[0],))

    def renew(self, owner: str, job_ids: Sequence[str], now: float, lease_s: float) -> set[str]:
        if not job_ids:
            return set()
        marks = ", ".join("?" * len(job_ids))
        mine = f"id IN ({marks}) AND lease_owner = ? AND state = 'running'"
        with self.transaction() as cur:
            cur.execute(
                self._q(f"UPDATE servekit_jobs SET lease_until = ? WHERE {mine}"),
                (now + lease_s, *job_ids, owner),
            )
            cur.execute(self._q(f"SELECT id FROM servekit_jobs WHERE {mine}"), (*job_ids, owner))
            held = {row[0] for row in cur.fetchall()}
        return set(job_ids) - held

    def progress(self, job_id: str, owner: str, value: float, now: float) -> None:
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "UPDATE servekit_jobs SET progress = ?, updated_at = ? "
                    "WHERE id = ? AND lease_owner = ? AND state = 'running'"
                ),
                (value, now, job_id, owner),
            )

    def finish(
        self,
        job_id: str,
        owner: str,
        now: float,
        result: JobResult | None = None,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        state = "failed" if error is not None else "succeeded"
        body, file = self._keep_result(job_id, result)
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "UPDATE servekit_jobs SET state = ?, finished_at = ?, updated_at = ?, "
                    "expires_at = ? + result_ttl_s, error = ?, result_status = ?, result_type = ?, "
                    "result = ?, result_file = ?, lease_owner = NULL "
                    "WHERE id = ? AND lease_owner = ? AND state = 'running'"
                ),
                (
                    state, now, now, now, json.dumps(error) if error else None,
                    result.status if result else None, result.media_type if result else None,
                    body, file, job_id, owner,
                ),
            )  # fmt: skip
            done = cur.rowcount == 1
            record = self._select(cur, "id = ?", (job_id,)) if done else None
        if not done and file is not None:
            self._drop_file(file)
        return record

    def retry(self, job_id: str, owner: str, error: dict[str, Any], run_after: float, now: float) -> bool:
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "UPDATE servekit_jobs SET state = 'queued', run_after = ?, updated_at = ?, error = ?, "
                    "lease_owner = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'"
                ),
                (run_after, now, json.dumps(error), job_id, owner),
            )
            return bool(cur.rowcount == 1)

    def cancel(self, job_id: str, now: float) -> JobRecord | None:
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "UPDATE servekit_jobs SET state = 'cancelled', finished_at = ?, updated_at = ?, "
                    f"expires_at = ? + result_ttl_s WHERE id = ? AND state IN {_UNFINISHED}"
                ),
                (now, now, now, job_id),
            )
            return self._select(cur, "id = ? AND (expires_at IS NULL OR expires_at > ?)", (job_id, now))

    def payload(self, job_id: str) -> bytes:
        with self.transaction() as cur:
            cur.execute(self._q("SELECT payload FROM servekit_jobs WHERE id = ?"), (job_id,))
            row = cur.fetchone()
        return b"" if row is None else bytes(row[0])

    def result(self, job_id: str) -> JobResult | None:
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "SELECT result_status, result_type, result, result_file FROM servekit_jobs WHERE id = ?"
                ),
                (job_id,),
            )
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        body = self._read_file(row[3]) if row[3] is not None else bytes(row[2] or b"")
        return JobResult(row[0], row[1], body)

    def sweep(self, now: float) -> int:
        with self.transaction() as cur:
            cur.execute(self._q("SELECT result_file FROM servekit_jobs WHERE expires_at <= ?"), (now,))
            files = [row[0] for row in cur.fetchall() if row[0]]
            cur.execute(self._q("DELETE FROM servekit_jobs WHERE expires_at <= ?"), (now,))
            count = int(cur.rowcount)
        for file in files:
            self._drop_file(file)
        return count

    def _blob(self, data: bytes) -> Any:
        return data

    def _keep_result(self, job_id: str, result: JobResult | None) -> tuple[Any, str | None]:
        return (None if result is None else self._blob(result.body)), None

    def _read_file(self, name: str) -> bytes:
        raise JobStoreError(f"result file {name!r} kept by a store without files")

    def _drop_file(self, name: str) -> None:  # noqa: B027  # a hook, no-op by default
        """Delete a result file (stores that keep them)."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS servekit_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    result_ttl_s REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    run_after REAL NOT NULL,
    expires_at REAL,
    progress REAL,
    error TEXT,
    idempotency_key TEXT UNIQUE,
    webhook_url TEXT,
    settings TEXT,
    payload BLOB,
    lease_owner TEXT,
    lease_until REAL,
    result_status INTEGER,
    result_type TEXT,
    result BLOB,
    result_file TEXT
);
CREATE INDEX IF NOT EXISTS servekit_jobs_runnable ON servekit_jobs (state, priority, seq);
CREATE INDEX IF NOT EXISTS servekit_jobs_target ON servekit_jobs (target, state);
"""


class SQLiteJobStore(SqlJobStore):
    """Jobs in an SQLite database in WAL mode under a data directory (or in memory, for None).

    Several processes on one machine may share the directory: claims take SQLite's write lock.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        if directory is not None:
            check_data_dir(directory)
            (directory / "results").mkdir(exist_ok=True)
        target = ":memory:" if directory is None else str(directory / "jobs.sqlite3")
        try:
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as exc:
            raise JobStoreError(f"the job database {target!r} cannot be used: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _keep_result(self, job_id: str, result: JobResult | None) -> tuple[Any, str | None]:
        if result is None or self.directory is None or len(result.body) <= FILE_RESULT_BYTES:
            return super()._keep_result(job_id, result)
        name = f"{job_id}.bin"
        final = self.directory / "results" / name
        partial = final.with_suffix(".part")
        with partial.open("wb") as out:
            out.write(result.body)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(final)
        return None, name

    def _read_file(self, name: str) -> bytes:
        assert self.directory is not None
        return (self.directory / "results" / name).read_bytes()

    def _drop_file(self, name: str) -> None:
        if self.directory is not None:
            (self.directory / "results" / name).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
