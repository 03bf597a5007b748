"""`servekit serve --backend ray` and `servekit status` as a user runs them: real subprocesses.

One test lets servekit start (and stop) a local Ray of its own; the others join the session's
cluster, which must keep running after the command exits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from behaviour_support import RayCluster, free_port
from ray import serve

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
APP = str(HERE / "cli_app.py") + ":app"
COMMAND = (sys.executable, "-m", "servekit")
START_DEADLINE_S = 90.0
EXIT_DEADLINE_S = 60.0


def child_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in {"PYTHONPATH", "RAY_ADDRESS"}}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Cli:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = START_DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"servekit exited ({self.process.returncode}) before {what}:\n{self.output()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.output()}")

    def served_url(self) -> str:
        pattern = re.compile(r"^servekit: serving \S+ at (http://\S+)$", re.MULTILINE)
        self.wait_for(lambda: pattern.search(self.output()) is not None, "'serving ... at URL'")
        match = pattern.search(self.output())
        assert match is not None
        return match.group(1)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"servekit did not exit within {EXIT_DEADLINE_S} s:\n{self.output()}"
            ) from None


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Cli:
        log = tmp_path / f"cli-{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [*COMMAND, *args], env=env or child_env(), stdout=out, stderr=subprocess.STDOUT,
                text=True, start_new_session=True, cwd=tmp_path,
            )  # fmt: skip
        started.append(process)
        return Cli(process, log)

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_on_a_local_ray_it_starts_then_stops_it_on_sigterm(start_cli: Callable[..., Cli]) -> None:
    port = free_port()
    cli = start_cli("serve", APP, "--backend", "ray", "--port", str(port))
    url = cli.served_url()
    assert url == f"http://127.0.0.1:{port}"
    cli.wait_for(lambda: ready(url), "readiness")
    assert "on Ray Serve as app 'Front'" in cli.output()
    assert re.search(rf"^\s+POST\s+{re.escape(url)}/count$", cli.output(), re.MULTILINE)
    ray_processes = psutil.Process(cli.process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in ray_processes), "servekit started a Ray of its own"

    response = httpx.post(url + "/count", json={"text": "one two three"}, timeout=30)
    assert response.status_code == 200
    assert response.json()["words"] == 3
    assert response.json()["pid"] != cli.process.pid, "the ingress ran in a Ray replica"
    status = subprocess.run(
        [*COMMAND, "status", "--url", url, "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    (document,) = json.loads(status.stdout)
    assert document["backend"] == "ray"
    assert set(document["deployments"]) == {"Front", "Counter"}

    assert cli.stop() == 0
    assert "servekit: stopped" in cli.output()
    deadline = time.monotonic() + 20
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ray_processes):
        assert time.monotonic() < deadline, "Ray processes outlived the command"
        time.sleep(0.2)


def test_serve_on_a_cluster_leaves_the_cluster_running(
    ray_cluster: RayCluster, start_cli: Callable[..., Cli]
) -> None:
    cli = start_cli(
        "serve",
        APP,
        "--backend",
        "ray",
        "--address",
        ray_cluster.address,
        "--port",
        str(ray_cluster.http_port),
    )
    url = cli.served_url()
    cli.wait_for(lambda: ready(url), "readiness")
    assert httpx.post(url + "/count", json={"text": "a b"}, timeout=30).json()["words"] == 2

    status = subprocess.run(
        [*COMMAND, "status", "--address", ray_cluster.address, "--app", "Front"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "Front (ray): running, ready" in status.stdout
    assert re.search(r"^\s+Counter\s+1/1\s", status.stdout, re.MULTILINE), status.stdout
    assert re.search(r"^\s+Counter#\S+\s+running\s+pid \d+", status.stdout, re.MULTILINE), status.stdout

    assert cli.stop() == 0
    assert "Front" not in serve.status().applications, "the app is deleted"
    assert serve.status().proxies, "Serve and the cluster keep running"


def test_status_of_an_app_that_is_not_there_fails_in_one_line(ray_cluster: RayCluster) -> None:
    result = subprocess.run(
        [*COMMAND, "status", "--address", ray_cluster.address, "--app", "NoSuchApp"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"servekit: error: no Serve application named 'NoSuchApp' on the cluster at {ray_cluster.address}"
    )


def test_ray_backend_flags_are_checked_before_anything_starts(start_cli: Callable[..., Cli]) -> None:
    cli = start_cli("serve", APP, "--address", "127.0.0.1:6379")
    assert cli.process.wait(timeout=EXIT_DEADLINE_S) == 1
    assert "servekit: error: address='127.0.0.1:6379' is for the Ray backend" in cli.output()
