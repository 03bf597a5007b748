"""Durable jobs through the real CLI: kill -9 the server during 100 jobs, restart it, lose none;
a read-only or full data directory is refused at start (real mounts, in a mount namespace)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
APP = "apps/jobs_app.py:app"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
JOBS = 100


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVEKIT_JOBS_LEASE_S": "1"}
    env["PYTHONPATH"] = str(SOURCE_TREE)
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `servekit serve` on a data dir; whatever is left running is killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int, data_dir: Path | str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        command = [*prefix, sys.executable, "-m", "servekit", "serve", APP, "--port", str(port)]
        log = (tmp_path / f"server-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [*command, "--data-dir", str(data_dir)], cwd=HERE, env=_env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _count(url: str, state: str) -> int:
    return len(httpx.get(url + "/-/jobs", params={"state": state, "limit": 1000}, timeout=10).json()["jobs"])


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_during_100_jobs_then_restart_finishes_every_job(
    start_server: Callable[..., subprocess.Popen[bytes]],
    free_port: int,
    tmp_path: Path,
    wait_until: Callable[..., None],
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    url = f"http://127.0.0.1:{free_port}"
    data = tmp_path / "data" if store == "sqlite" else request.getfixturevalue("postgres_url")
    first = start_server(free_port, data)
    wait_until(lambda: _ready(url), "the server to start")
    with httpx.Client(base_url=url, timeout=10) as client:
        ids = [client.post("/job", params={"n": n}).json()["id"] for n in range(JOBS)]
    wait_until(lambda: _count(url, "succeeded") >= 10 and _count(url, "running") > 0, "jobs under way")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    start_server(free_port, data)
    wait_until(lambda: _ready(url), "the restarted server")
    wait_until(lambda: _count(url, "succeeded") == JOBS, "every job to succeed after the restart", 60)
    with httpx.Client(base_url=url, timeout=10) as client:
        statuses = [client.get(f"/-/jobs/{job_id}").json() for job_id in ids]
        results = [client.get(f"/-/jobs/{job_id}/result").json() for job_id in ids]
    assert [r["n"] for r in results] == list(range(JOBS))
    assert [r["attempt"] for r in results] == [s["attempts"] for s in statuses]  # user code saw it
    assert any(s["attempts"] == 2 for s in statuses)  # those running at the kill ran again


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ("mount -o bind,ro {d} {d}", "cannot be written: Read-only file system"),
        ("mount -t tmpfs -o size=1m servekit-full {d}", "KiB free; the job store needs at least"),
    ],
    ids=["read-only", "full"],
)
def test_an_unusable_data_dir_is_reported_at_start(
    start_server: Callable[..., subprocess.Popen[bytes]],
    free_port: int,
    tmp_path: Path,
    mount: str,
    message: str,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = start_server(
        free_port, data, ("unshare", "-m", "sh", "-c", f'{mount.format(d=data)} && exec "$@"', "sh")
    )
    assert server.wait(timeout=60) == 1
    log = (tmp_path / "server-0.log").read_text()
    assert message in log
    assert "servekit: error: the data directory" in log
