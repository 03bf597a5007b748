"""The PostgreSQL job store (`postgresql://` URLs), for several servers or a Ray cluster.

Claims take the first runnable row with `SELECT ... FOR UPDATE SKIP LOCKED`, so servers never
wait on each other's claims and never claim the same job. Needs the `postgres` extra (psycopg 3).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from servekit._replica.jobs.store import SqlJobStore
from servekit.errors import JobStoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS servekit_jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    result_ttl_s DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    run_after DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    progress DOUBLE PRECISION,
    error TEXT,
    idempotency_key TEXT UNIQUE,
    webhook_url TEXT,
    settings TEXT,
    payload BYTEA,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    result_status INTEGER,
    result_type TEXT,
    result BYTEA,
    result_file TEXT
);
CREATE INDEX IF NOT EXISTS servekit_jobs_runnable ON servekit_jobs (state, priority, seq);
CREATE INDEX IF NOT EXISTS servekit_jobs_target ON servekit_jobs (target, state);
"""


class PostgresJobStore(SqlJobStore):
    """Jobs in a PostgreSQL database; results stay in the table (no files)."""

    placeholder = "%s"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: PLC0415 (the optional `postgres` extra)
        except ImportError:
            raise JobStoreError(
                "a postgresql:// job store needs psycopg 3: pip install 'servekit[postgres]'"
            ) from None
        self._lock = threading.Lock()
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(7710001)")  # one schema creator at a time
                cur.execute(_SCHEMA)
        except psycopg.Error as exc:
            raise JobStoreError(f"the job database {_redacted(url)!r} cannot be used: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            yield cur

    def _lock_target(self, cur: Any, target: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (target,))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _redacted(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
