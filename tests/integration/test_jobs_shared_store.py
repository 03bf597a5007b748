"""Two servers sharing one PostgreSQL job store: each job runs on one of them at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

import servekit as sk

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LOCK = threading.Lock()
RUNNING: set[str] = set()
OVERLAPS: list[str] = []
RAN_ON: dict[str, list[str]] = {}


@sk.deployment
class Shared:
    def __init__(self, server: str) -> None:
        self.server = server

    @sk.endpoint("/job", mode="async", jobs=sk.JobOptions(concurrency=4))
    def job(self) -> str:
        job_id = sk.job_context().job_id
        with LOCK:
            if job_id in RUNNING:
                OVERLAPS.append(job_id)
            RUNNING.add(job_id)
            RAN_ON.setdefault(job_id, []).append(self.server)
        time.sleep(0.02)
        with LOCK:
            RUNNING.discard(job_id)
        return self.server


def test_two_servers_share_the_queue_and_never_run_a_job_twice(
    serve_app: Callable[..., sk.Server], postgres_url: str, wait_until: Callable[..., None]
) -> None:
    servers = [serve_app(Shared.options(name="Shared").bind(name), data_dir=postgres_url) for name in "ab"]
    with httpx.Client(timeout=10) as client:
        ids = [client.post(servers[n % 2].url + "/job").json()["id"] for n in range(60)]

        def done() -> bool:
            page = client.get(servers[0].url + "/-/jobs", params={"state": "succeeded", "limit": 1000})
            return len(page.json()["jobs"]) == len(ids)

        wait_until(done, "every job to succeed")
        answers = {job_id: client.get(servers[1].url + f"/-/jobs/{job_id}/result").text for job_id in ids}
    assert OVERLAPS == []
    assert all(len(RAN_ON[job_id]) == 1 for job_id in ids)
    assert {RAN_ON[job_id][0] for job_id in ids} == {"a", "b"}  # both servers took jobs
    assert all(answers[job_id] == RAN_ON[job_id][0] for job_id in ids)
