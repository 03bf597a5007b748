"""`servekit build` and `servekit serve BUNDLE` as a user runs them: the real CLI in subprocesses,
real HTTP on 127.0.0.1, uv resolving the lock from the package registry.

The app is `examples/textstats` (no torch, so its lock is small), copied into a git repository
of its own so the manifest's commit and dirty flag are the test's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "textstats"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
DEADLINE_S = 60.0
TEXT = {"text": "The cat saw the dog and the cat ran"}


def _env(home: Path) -> dict[str, str]:
    dropped = ("PYTHONPATH", "SOURCE_DATE_EPOCH", "SERVEKIT_MODEL_STORE")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(SOURCE_TREE),
        SERVEKIT_HOME=str(home),
        SERVEKIT_MODEL_CACHE=str(home / "model-cache"),
    )
    return env


def _git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder), *args],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """examples/textstats in a git repository of its own, committed."""
    root = tmp_path / "repo" / "textstats"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__"))
    _git(root.parent, "init", "-q")
    _git(root.parent, "add", ".")
    _git(root.parent, "commit", "-qm", "app")
    return root


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run `servekit ARGS` to completion (stdout and stderr together), with a home of its own;
    keyword arguments set environment variables."""

    def run(*args: str, cwd: Path = tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "servekit", *args], cwd=cwd, env={**_env(tmp_path / "home"), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=DEADLINE_S, check=False,
        )  # fmt: skip

    return run


def _built(result: subprocess.CompletedProcess[str]) -> tuple[Path, str]:
    assert result.returncode == 0, result.stdout
    path, sha = result.stdout.splitlines()[0], re.search(r"sha256 ([0-9a-f]{64})", result.stdout)
    assert sha is not None, result.stdout
    return Path(path), sha.group(1)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """`serve(TARGET)`: `servekit serve TARGET --port 0` in its own session, its URL once ready."""
    started: list[subprocess.Popen[str]] = []

    def start(target: str) -> str:
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "servekit", "serve", target, "--port", "0"], cwd=tmp_path,
                env=_env(tmp_path / "home"), stdout=out, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
        started.append(process)
        url = _served_url(process, log)
        _until_ready(process, log, url)
        return url

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _served_url(process: subprocess.Popen[str], log: Path) -> str:
    pattern = re.compile(r"^servekit: serving \S+ at (http://\S+)$", re.MULTILINE)
    deadline = time.monotonic() + DEADLINE_S
    while (match := pattern.search(log.read_text())) is None:
        assert process.poll() is None, f"servekit exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not serving within {DEADLINE_S} s:\n{log.read_text()}"
        time.sleep(0.05)
    return match.group(1)


def _until_ready(process: subprocess.Popen[str], log: Path, url: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"servekit exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready within {DEADLINE_S} s:\n{log.read_text()}"
        time.sleep(0.05)


def test_two_builds_and_a_build_from_a_clone_elsewhere_are_byte_identical(
    project: Path, tmp_path: Path, cli: Cli
) -> None:
    first, sha = _built(cli("build", str(project / "app.py"), "-o", str(tmp_path / "one")))
    again, sha_again = _built(cli("build", f"{project}/app.py:app", "-o", str(tmp_path / "two")))
    clone = tmp_path / "elsewhere" / "deeper"
    clone.parent.mkdir()
    _git(clone.parent, "clone", "-q", str(project.parent), clone.name)
    cloned, sha_clone = _built(cli("build", "app.py:app", "-o", "out", cwd=clone / "textstats"))
    assert sha == sha_again == sha_clone
    assert first.read_bytes() == again.read_bytes() == cloned.read_bytes()
    with tarfile.open(first) as tar:
        manifest = json.loads(tar.extractfile("servekit.json").read())  # type: ignore[union-attr]
    assert manifest["git"]["dirty"] is False
    assert manifest["requirements_source"] == "declared in requirements.txt"
    assert {"pydantic", "starlette", "uvicorn"} <= set(manifest["dependencies"])
    assert [entry["path"] for entry in manifest["files"] if entry["path"].startswith("src/")] == [
        "src/.servekitignore", "src/app.py", "src/requirements.txt", "src/words.py",
    ]  # fmt: skip
    assert cli("build", "--check", str(first), cwd=project).returncode == 0
    (project / "words.py").write_text((project / "words.py").read_text() + "\n# changed\n")
    check = cli("build", "--check", str(first), cwd=project)
    assert check.returncode == 1
    assert "the rebuild differs" in check.stdout
    assert "src/words.py" in check.stdout


def test_a_bundle_served_from_its_archive_answers_like_the_source_app(
    project: Path, tmp_path: Path, cli: Cli, serve: Callable[[str], str]
) -> None:
    archive, sha = _built(cli("build", f"{project}/app.py:app", "-o", str(tmp_path / "dist")))
    source_url, bundle_url = serve(f"{project}/app.py:app"), serve(str(archive))
    for body in (TEXT, {"text": "One"}, {"text": ""}):
        expected = httpx.post(f"{source_url}/stats", json=body, timeout=10)
        got = httpx.post(f"{bundle_url}/stats", json=body, timeout=10)
        assert (got.status_code, got.json()) == (expected.status_code, expected.json())
    assert httpx.post(f"{bundle_url}/stats", json=TEXT, timeout=10).json()["top"] == ["the", "cat", "and"]
    assert (tmp_path / "home" / "cache" / sha / "servekit.json").is_file()


def test_a_tampered_bundle_is_refused_naming_the_file(project: Path, tmp_path: Path, cli: Cli) -> None:
    archive, _ = _built(cli("build", f"{project}/app.py:app", "-o", str(tmp_path / "dist")))
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    words = unpacked / "src" / "words.py"
    words.write_text(words.read_text().replace("lower()", "upper()"))
    refused = cli("serve", str(unpacked), "--port", "0")
    assert refused.returncode == 1
    lines = refused.stdout.strip().splitlines()
    assert len(lines) == 1, refused.stdout
    assert "bundle file 'src/words.py' does not match its sha256" in lines[0]


def test_the_store_lists_shows_and_removes_built_bundles(project: Path, tmp_path: Path, cli: Cli) -> None:
    archive, sha = _built(
        cli("build", f"{project}/app.py:app", "-o", str(tmp_path / "dist"), "--version", "1.0")
    )
    name = archive.name.removesuffix(".tar.gz")
    assert name == "textstats-1.0"
    listed = cli("bundles", "list")
    assert name in listed.stdout
    shown = cli("bundles", "show", "textstats")
    assert shown.returncode == 0, shown.stdout
    assert re.search(rf"^sha256\s+{sha}$", shown.stdout, re.MULTILINE)
    assert re.search(r"^Tokenize\s+1\s+1.0\s+0.0\s+app:Tokenize$", shown.stdout, re.MULTILINE)
    assert json.loads(cli("bundles", "show", name, "--json").stdout)["version"] == "1.0"
    assert cli("bundles", "rm", name).returncode == 0
    assert name not in cli("bundles", "list").stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("servekit: error: ")
    return lines[0]


def test_build_errors_are_one_line_naming_the_problem(project: Path, tmp_path: Path, cli: Cli) -> None:
    (project / "broken.py").write_text("import no_such_module_here\n")
    error = _one_line_error(cli("build", f"{project}/broken.py:app"))
    assert "cannot build" in error
    assert "no_such_module_here" in error

    (project / "lambdas.py").write_text(
        "import servekit as sk\n\n@sk.deployment\nclass Scale:\n"
        "    def __init__(self, factor) -> None:\n        self.factor = factor\n\n"
        "app = Scale.bind(lambda x: x * 2)\n"
    )
    error = _one_line_error(cli("build", f"{project}/lambdas.py:app"))
    assert "deployment 'Scale': bound argument 'factor'" in error

    (project / "model.bin").write_bytes(b"\0" * (2 * 2**20 + 1))
    error = _one_line_error(cli("build", f"{project}/app.py:app", "--max-file-mb", "1"))
    assert "'model.bin' is" in error
    assert "--include 'model.bin'" in error
    (project / "model.bin").unlink()

    (project / "requirements.txt").write_text("servekit-surely-no-such-distribution-xyz==1.0\n")
    error = _one_line_error(cli("build", f"{project}/app.py:app"))
    assert "cannot resolve the app's requirements (declared in requirements.txt)" in error
    assert "servekit-surely-no-such-distribution-xyz" in error


def test_a_bundle_built_for_a_newer_servekit_is_refused(project: Path, tmp_path: Path, cli: Cli) -> None:
    archive, _ = _built(cli("build", f"{project}/app.py:app", "-o", str(tmp_path / "dist")))
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = json.loads((unpacked / "servekit.json").read_text())
    manifest["servekit"] = "99.0.0"
    (unpacked / "servekit.json").write_text(json.dumps(manifest))
    error = _one_line_error(cli("serve", str(unpacked), "--port", "0"))
    assert "built with servekit 99.0.0, newer than this servekit" in error


GREETER = """
from pathlib import Path

from pydantic import BaseModel

import servekit as sk


class Person(BaseModel):
    name: str


@sk.deployment
class Greeter:
    def __init__(self, weights: str) -> None:
        self.greeting = Path(weights).read_text()

    @sk.endpoint("/greet")
    def greet(self, person: Person) -> dict[str, str | None]:
        return {"text": f"{self.greeting}, {person.name}", "model": sk.replica_context().model_version}


app = Greeter.bind(sk.model("greeting", tag="production"))
"""


def _greeting_store(store: Path, weights: Path) -> None:
    """A store where 'greeting:production' points to v1 ("hello") while 'latest' is v2 ("howdy")."""
    for version, text in (("v1", "hello"), ("v2", "howdy")):
        (weights / version).mkdir(parents=True, exist_ok=True)
        (weights / version / "greeting.txt").write_text(text)
        sk.models.push("greeting", weights / version / "greeting.txt", version=version, store=str(store))
    sk.models.tag("greeting", "v1", "production", store=str(store))


def test_a_bundle_carries_its_models_and_serves_them_without_the_store(
    tmp_path: Path, cli: Cli, serve: Callable[[str], str]
) -> None:
    project = tmp_path / "greeter"
    project.mkdir()
    (project / "app.py").write_text(GREETER)
    (project / "requirements.txt").write_text("pydantic>=2.7\n")
    store = tmp_path / "store"
    _greeting_store(store, tmp_path / "weights")
    target = f"{project}/app.py:app"
    built = cli("build", target, "-o", str(tmp_path / "one"), SERVEKIT_MODEL_STORE=str(store))
    archive, sha = _built(built)
    assert re.search(r"model greeting\s+tag production -> version v1  5 bytes", built.stdout), built.stdout
    shown = cli("bundles", "show", str(archive)).stdout
    assert re.search(r"^greeting\s+production\s+v1\s+5  [0-9a-f]{16}$", shown, re.MULTILINE), shown
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("servekit.json").read())  # type: ignore[union-attr]
        names = tar.getnames()
    [model] = manifest["models"]
    v1 = sk.models.resolve("greeting@v1", store=str(store))
    assert model == {"name": "greeting", "version": "v1", "tag": "production", "sha256": v1.sha256, "size": 5}
    blob = f"models/blobs/sha256/{v1.files[0].sha256}"
    listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    assert listed[blob] == v1.files[0].sha256
    assert {
        blob,
        "models/models/greeting/versions/v1.json",
        "models/models/greeting/tags/production.json",
    } <= set(names)
    assert not any("v2" in name for name in names)

    shutil.rmtree(store)  # the same versions pushed again, at other times: the same bytes
    _greeting_store(store, tmp_path / "weights")
    again, sha_again = _built(
        cli("build", target, "-o", str(tmp_path / "two"), SERVEKIT_MODEL_STORE=str(store))
    )
    assert (sha_again, again.read_bytes()) == (sha, archive.read_bytes())

    sk.models.tag("greeting", "v2", "production", store=str(store))
    check = cli("build", "--check", str(archive), target, SERVEKIT_MODEL_STORE=str(store))
    assert check.returncode == 1, check.stdout
    assert "models that resolve to another version now: greeting:production v1 -> v2" in check.stdout

    shutil.rmtree(store)  # served from the bundle alone
    url = serve(str(archive))
    answer = httpx.post(f"{url}/greet", json={"name": "Ada"}, timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"text": "hello, Ada", "model": "v1"})
    assert "models from the bundle: greeting:production -> v1" in (tmp_path / "serve-0.log").read_text()

    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (unpacked / blob).write_text("HELLO")
    error = _one_line_error(cli("serve", str(unpacked), "--port", "0"))
    assert f"bundle file {blob!r} does not match its sha256" in error
