"""The job stores against real databases: an SQLite file in WAL mode and a PostgreSQL server.

Every test runs on both stores (the PostgreSQL ones are marked `postgres`: `nox -s postgres`).
Time is passed in (`now`), so leases, retries and TTLs are tested without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servekit._replica.jobs.records import JobResult, NewJob
from servekit._replica.jobs.store import FILE_RESULT_BYTES, JobStore, SQLiteJobStore, open_store
from servekit.errors import JobQueueFullError

pytestmark = pytest.mark.integration

OpenStore = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_again(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens (another connection to) one store: SQLite in `tmp_path`, or a fresh PostgreSQL database."""
    location = (
        str(tmp_path / "data") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    opened: list[JobStore] = []

    def open_one() -> JobStore:
        opened.append(open_store(location))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_again: OpenStore) -> JobStore:
    return open_again()


def job(name: str, target: str = "POST /t", **options: object) -> NewJob:
    return NewJob(id=name, kind="http", target=target, payload=f"payload {name}".encode(), **options)  # type: ignore[arg-type]


def test_a_job_goes_from_queued_to_succeeded_with_its_result(store: JobStore) -> None:
    record, created = store.submit(job("a"), now=100.0)
    assert (record.state, record.attempts, created) == ("queued", 0, True)
    claimed = store.claim("me", ["http"], [], now=101.0, lease_s=10)
    assert claimed is not None
    assert (claimed.id, claimed.state, claimed.attempts, claimed.started_at) == ("a", "running", 1, 101.0)
    assert store.payload("a") == b"payload a"
    store.progress("a", "me", 0.5, now=102.0)
    assert store.get("a", now=102.0).progress == 0.5  # type: ignore[union-attr]
    finished = store.finish("a", "me", 103.0, JobResult(200, "application/json", b'{"ok":1}'))
    assert finished is not None
    assert (finished.state, finished.finished_at) == ("succeeded", 103.0)
    assert store.result("a") == JobResult(200, "application/json", b'{"ok":1}')
    assert store.claim("me", ["http"], [], now=104.0, lease_s=10) is None


def test_jobs_survive_reopening_the_store(open_again: OpenStore) -> None:
    first = open_again()
    first.submit(job("kept"), now=1.0)
    first.close()
    again = open_again()
    assert again.get("kept", now=2.0).state == "queued"  # type: ignore[union-attr]
    assert again.claim("other", ["http"], [], now=2.0, lease_s=10).id == "kept"  # type: ignore[union-attr]


def test_large_results_round_trip(store: JobStore) -> None:
    store.submit(job("big"), now=1.0)
    store.claim("me", ["http"], [], now=1.0, lease_s=10)
    body = bytes(range(256)) * (FILE_RESULT_BYTES // 128)
    store.finish("big", "me", 2.0, JobResult(200, "application/octet-stream", body))
    assert store.result("big") == JobResult(200, "application/octet-stream", body)
    if isinstance(store, SQLiteJobStore):  # kept as a file beside the database
        assert store.directory is not None
        assert (store.directory / "results" / "big.bin").read_bytes() == body


def test_priority_first_then_age_and_busy_targets_wait(store: JobStore) -> None:
    store.submit(job("old"), now=1.0)
    store.submit(job("urgent", target="POST /u", priority=5), now=2.0)
    store.submit(job("young"), now=3.0)
    order = [store.claim("me", ["http"], [], now=4.0, lease_s=10).id for _ in range(2)]  # type: ignore[union-attr]
    assert order == ["urgent", "old"]
    assert store.claim("me", ["http"], ["POST /t"], now=4.0, lease_s=10) is None
    assert store.claim("me", ["python"], [], now=4.0, lease_s=10) is None  # kinds it cannot run


def test_a_full_queue_refuses_and_stores_nothing(store: JobStore) -> None:
    store.submit(job("one", max_queued=2), now=1.0)
    store.submit(job("two", max_queued=2), now=1.0)
    with pytest.raises(JobQueueFullError, match="max_queued=2"):
        store.submit(job("three", max_queued=2), now=1.0)
    assert store.get("three", now=1.0) is None
    assert len(store.list(None, 10, 0, now=1.0)) == 2


def test_an_idempotency_key_gives_back_the_same_job(store: JobStore) -> None:
    _, created = store.submit(job("x", idempotency_key="k"), now=1.0)
    again, created_again = store.submit(job("y", idempotency_key="k"), now=2.0)
    assert (again.id, created, created_again) == ("x", True, False)


def test_an_expired_lease_lets_another_server_run_it_again(store: JobStore) -> None:
    store.submit(job("a"), now=1.0)
    store.claim("dead", ["http"], [], now=1.0, lease_s=5)
    assert store.claim("alive", ["http"], [], now=5.0, lease_s=5) is None  # the lease holds
    taken = store.claim("alive", ["http"], [], now=7.0, lease_s=5)
    assert taken is not None
    assert taken.attempts == 2
    assert store.finish("a", "dead", 8.0, JobResult(200, "text/plain", b"late")) is None  # not its job now
    assert store.renew("dead", ["a"], now=8.0, lease_s=5) == {"a"}
    assert store.renew("alive", ["a"], now=8.0, lease_s=5) == set()
    assert store.finish("a", "alive", 9.0, JobResult(200, "text/plain", b"ok")) is not None


def test_cancel_and_retry(store: JobStore) -> None:
    store.submit(job("queued"), now=1.0)
    assert store.cancel("queued", now=2.0).state == "cancelled"  # type: ignore[union-attr]
    assert store.cancel("missing", now=2.0) is None
    store.submit(job("running"), now=3.0)
    store.claim("me", ["http"], [], now=3.0, lease_s=10)
    store.cancel("running", now=4.0)
    assert store.renew("me", ["running"], now=4.0, lease_s=10) == {"running"}
    assert store.finish("running", "me", 5.0, JobResult(200, "text/plain", b"discarded")) is None
    store.submit(job("flaky"), now=6.0)
    store.claim("me", ["http"], [], now=6.0, lease_s=10)
    assert store.retry("flaky", "me", {"type": "x", "message": "m"}, run_after=20.0, now=7.0)
    assert store.claim("me", ["http"], [], now=19.0, lease_s=10) is None
    again = store.claim("me", ["http"], [], now=20.0, lease_s=10)
    assert again is not None
    assert (again.id, again.attempts, again.error) == ("flaky", 2, {"type": "x", "message": "m"})


def test_listing_pages_by_cursor_and_state_and_expiry_sweeps(store: JobStore) -> None:
    for n in range(5):
        store.submit(job(f"j{n}", result_ttl_s=10.0), now=float(n))
    store.claim("me", ["http"], [], now=5.0, lease_s=10)
    store.finish("j0", "me", 5.0, JobResult(200, "text/plain", b"r"))
    first = store.list(None, 2, 0, now=6.0)
    second = store.list(None, 2, first[-1].seq, now=6.0)
    assert [r.id for r in first + second] == ["j0", "j1", "j2", "j3"]
    assert [r.id for r in store.list("succeeded", 10, 0, now=6.0)] == ["j0"]
    assert store.get("j0", now=16.0) is None  # expired: as if gone
    assert store.sweep(now=16.0) == 1
    assert len(store.list(None, 10, 0, now=16.0)) == 4


def test_concurrent_claims_from_two_connections_take_each_job_once(open_again: OpenStore) -> None:
    stores = [open_again(), open_again()]
    for n in range(60):
        stores[0].submit(job(f"j{n}"), now=1.0)
    taken: list[list[str]] = [[], []]

    def drain(index: int) -> None:
        while (
            record := stores[index].claim(f"server{index}", ["http"], [], now=2.0, lease_s=30)
        ) is not None:
            taken[index].append(record.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken[0] + taken[1]) == sorted(f"j{n}" for n in range(60))
