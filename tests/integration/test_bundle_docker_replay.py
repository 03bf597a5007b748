"""A bundle's Dockerfile, replayed step by step in a clean virtual environment (no container engine
needed): install requirements.lock with hashes, install servekit, serve the bundle with the
Dockerfile's own CMD, pass its own HEALTHCHECK, and answer like the source app.

Two steps differ from an image build, on purpose: the bundle folder is the unpacked archive (what
`COPY . /bundle` gives), and servekit is installed from this checkout (the Dockerfile's
`SERVEKIT_SPEC` build argument; servekit is not on the package registry, and the checkout is
what is under test). The app is `examples/textstats`, whose lock is small (no torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

import servekit as sk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "textstats"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
INSTALL_S = 240.0
TEXTS = ["the cat saw the dog and the cat ran", "One two two", ""]


def _clean_env(home: Path) -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env.update(SERVEKIT_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def _run(*command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=INSTALL_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stdout[-3000:]}"
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _source_answers() -> list[tuple[int, object]]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("textstats_replay_source", EXAMPLE / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with sk.serve(module.app, port=0, blocking=False) as server:
            return _answers(server.url)
    finally:
        sys.path.remove(str(EXAMPLE))


def _answers(url: str) -> list[tuple[int, object]]:
    answers = []
    for text in TEXTS:
        response = httpx.post(f"{url}/stats", json={"text": text}, timeout=30)
        answers.append((response.status_code, response.json()))
    return answers


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_dockerfile_replayed_in_a_clean_venv_serves_the_bundle_like_the_source_app(
    tmp_path: Path,
) -> None:
    env = _clean_env(tmp_path / "home")
    built = _run(
        sys.executable, "-m", "servekit", "build", f"{EXAMPLE}/app.py:app", "-o", str(tmp_path / "dist"),
        "--no-store", env={**env, "PYTHONPATH": str(SOURCE_TREE)}, cwd=tmp_path,
    )  # fmt: skip
    bundle = tmp_path / "bundle"  # COPY . /bundle
    with tarfile.open(built.splitlines()[0]) as tar:
        tar.extractall(bundle, filter="data")
    dockerfile = (bundle / "Dockerfile").read_text().splitlines()
    steps = [line for line in dockerfile if line.startswith(("RUN", "COPY", "CMD"))]
    assert steps.index("COPY requirements.lock /bundle/requirements.lock") < steps.index(
        "COPY --chown=servekit:servekit . /bundle"
    )

    # RUN python -m venv /opt/venv
    venv = tmp_path / "venv"
    _run(getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv), env=env, cwd=tmp_path)
    bin_dir = venv / "bin"
    # RUN pip install --no-cache-dir --require-hashes -r /bundle/requirements.lock
    assert "RUN pip install --no-cache-dir --require-hashes -r /bundle/requirements.lock" in steps
    pip = (str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    _run(*pip, "--require-hashes", "-r", str(bundle / "requirements.lock"), env=env, cwd=tmp_path)
    # RUN pip install --no-cache-dir --no-deps "$SERVEKIT_SPEC", with the spec pointing at this checkout
    assert 'RUN pip install --no-cache-dir --no-deps "$SERVEKIT_SPEC"' in steps
    _run(*pip, "--no-deps", str(SOURCE_TREE), env=env, cwd=tmp_path)

    # CMD ["servekit", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
    cmd = json.loads(steps[-1].removeprefix("CMD "))
    port = _free_port()
    cmd = [str(bin_dir / cmd[0]), *(str(bundle) if part == "/bundle" else part for part in cmd[1:])]
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(
            cmd, env={**env, "PATH": f"{bin_dir}:{env['PATH']}"}, cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        # HEALTHCHECK ... CMD python -c "...urlopen('http://127.0.0.1:8000/readyz')..."
        check = next(line for line in dockerfile if line.lstrip().startswith("CMD python -c"))
        code = re.search(r'python -c "(.*)"$', check)
        assert code is not None
        healthcheck = code.group(1).replace(":8000/", f":{port}/")
        _run(str(bin_dir / "python"), "-c", healthcheck, env=env, cwd=tmp_path)
        assert _answers(url) == _source_answers()
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
