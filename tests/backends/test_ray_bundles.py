"""A bundle on a real local Ray with its dashboard: Ray's own `serve deploy` of the bundle's
`ray/serve_config.yaml`, then `servekit deploy` of v1 and v2 under load.

The cluster is a `ray start --head --block` of this module's own (Ray's `serve deploy` talks to
the dashboard, which the session's cluster does not run), on free ports, stopped afterwards.
The app is `examples/textstats` (no torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

import servekit as sk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "textstats"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
START_S = 120.0
TEXTS = ["the cat saw the dog and the cat ran", "One two two", "a b c d"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass(frozen=True)
class DashboardRay:
    gcs: str
    dashboard: str
    http_port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _env(home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "RAY_ADDRESS")}
    # token auth is on for clusters here when ~/.ray/auth_token exists; this one is private to the test
    env.update(
        PYTHONPATH=str(SOURCE_TREE), PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", SERVEKIT_HOME=str(home)
    )
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardRay]:
    """A one-node Ray with its dashboard, on free ports, in its own session."""
    folder = tmp_path_factory.mktemp("ray")
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node, objects, http = _free_ports(10)
    env = _env(folder / "home")
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}",
        f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node}", f"--object-manager-port={objects}", "--num-cpus=6",
        "--include-dashboard=true", "--disable-usage-stats",
    ]  # fmt: skip
    with (folder / "ray.log").open("w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        head = DashboardRay(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", http, env)
        _until(lambda: _answers(f"{head.dashboard}/api/version"), "Ray's dashboard", folder / "ray.log")
        yield head
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        os.killpg(process.pid, signal.SIGKILL)  # `ray start --block` can hang on SIGTERM; its group goes
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _serves_stats(url: str) -> bool:
    try:
        return httpx.post(f"{url}/stats", json={"text": "x"}, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def _until(condition: object, what: str, log: Path | None = None, timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            detail = "" if log is None else f":\n{log.read_text()[-3000:]}"
            raise AssertionError(f"no {what} within {timeout} s{detail}")
        time.sleep(0.2)


def _run(head: DashboardRay, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=START_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    return done.stdout


def _build(head: DashboardRay, project: Path, out: Path) -> tuple[Path, str]:
    output = _run(head, sys.executable, "-m", "servekit", "build", "app.py:app", "-o", str(out), cwd=project)
    sha = re.search(r"sha256 ([0-9a-f]{64})", output)
    assert sha is not None, output
    return Path(output.splitlines()[0]), sha.group(1)


def _answers_of(url: str) -> list[dict[str, object]]:
    return [httpx.post(f"{url}/stats", json={"text": text}, timeout=30).json() for text in TEXTS]


@pytest.fixture(scope="module")
def source_answers() -> list[dict[str, object]]:
    """What the source app answers, served by servekit on this machine."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("textstats_source", EXAMPLE / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with sk.serve(module.app, port=0, blocking=False) as server:
            return _answers_of(server.url)
    finally:
        sys.path.remove(str(EXAMPLE))


def test_rays_own_serve_deploy_runs_the_bundle_config(
    ray_head: DashboardRay, tmp_path: Path, source_answers: list[dict[str, object]]
) -> None:
    from ray.serve.schema import ServeDeploySchema

    archive, _ = _build(ray_head, EXAMPLE, tmp_path / "dist")
    bundle = tmp_path / "bundle"
    with tarfile.open(archive) as tar:
        tar.extractall(bundle, filter="data")
    config = yaml.safe_load((bundle / "ray" / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # as built
    # where the bundle lies on the nodes (/bundle in the image) and a free port on this shared machine
    config["applications"][0]["runtime_env"]["working_dir"] = f"local://{bundle}"
    config["http_options"]["port"] = ray_head.http_port
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    serve = str(Path(sys.executable).parent / "serve")
    _run(
        ray_head,
        serve,
        "deploy",
        str(tmp_path / "config.yaml"),
        "--address",
        ray_head.dashboard,
        cwd=tmp_path,
    )
    try:
        _until(lambda: _serves_stats(ray_head.url), "the app on Ray")
        assert _answers_of(ray_head.url) == source_answers
    finally:
        _run(ray_head, serve, "shutdown", "-y", "--address", ray_head.dashboard, cwd=tmp_path)


def test_servekit_deploy_rolls_v1_to_v2_under_load_without_a_failed_request(
    ray_head: DashboardRay, tmp_path: Path, source_answers: list[dict[str, object]]
) -> None:
    v1, sha1 = _build(ray_head, EXAMPLE, tmp_path / "dist")
    project = tmp_path / "textstats"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    app = project / "app.py"
    app.write_text(app.read_text().replace("top=3)", "top=1)"))
    v2, sha2 = _build(ray_head, project, tmp_path / "dist2")
    deploy = (sys.executable, "-m", "servekit", "deploy")
    where = ("--address", ray_head.gcs, "--name", "stats", "--http-port", str(ray_head.http_port))
    assert "servekit: deployed textstats" in _run(ray_head, *deploy, str(v1), *where, cwd=tmp_path)
    assert _answers_of(ray_head.url) == source_answers
    assert "already running (nothing to do)" in _run(ray_head, *deploy, str(v1), *where, cwd=tmp_path)
    status = _run(
        ray_head, sys.executable, "-m", "servekit", "status", "--address", ray_head.gcs, cwd=tmp_path
    )
    assert f"bundle textstats {v1.name.split('-')[1].removesuffix('.tar.gz')}, sha256 {sha1}" in status

    results: list[tuple[int, int]] = []  # (status, len(top))
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{ray_head.url}/stats", json={"text": TEXTS[0]})
                top = len(response.json().get("top", [])) if response.status_code == 200 else -1
                results.append((response.status_code, top))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        _run(ray_head, *deploy, str(v2), *where, cwd=tmp_path)
        _until(lambda: sum(1 for _, top in results[-20:] if top == 1) == 20, "answers from v2", timeout=60)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert {status for status, _ in results} == {200}, [r for r in results if r[0] != 200][:5]
    assert {top for _, top in results} == {3, 1}  # v1's answers, then v2's
    status = _run(
        ray_head, sys.executable, "-m", "servekit", "status", "--address", ray_head.gcs, cwd=tmp_path
    )
    assert f"sha256 {sha2}" in status
