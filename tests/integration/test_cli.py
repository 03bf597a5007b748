"""The `servekit` command as a user runs it: real subprocesses serving on 127.0.0.1, real HTTP.

The apps served live in `tests/integration/apps/`; every wait is bounded by a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
PYTHON_M_SERVEKIT = (sys.executable, "-m", "servekit")
CONSOLE_SCRIPT = Path(sys.executable).parent / "servekit"
START_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 20.0
GRACE_PERIOD_S = 20.0
RELOAD_DEADLINE_S = 20.0
GREETER_ROUTES = [("GET", "/greet"), ("POST", "/size"), ("GET", "/wait")]
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]
"""The checkout whose servekit these tests import: the CLI under test must be the same one."""


@dataclass
class RunningCli:
    """A `servekit` subprocess whose stdout and stderr go to `log`."""

    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait_exit(self, timeout: float = EXIT_DEADLINE_S) -> int:
        """The exit code, once the process exits (within `timeout`)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"servekit did not exit within {timeout} s:\n{self.output()}") from None


StartCli = Callable[..., RunningCli]


def child_env(pythonpath: Path | None = None) -> dict[str, str]:
    """This environment, unbuffered, with PYTHONPATH set to `pythonpath` only (and to the source
    tree of the servekit under test, where that is a checkout rather than an installed package)."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    paths = [] if pythonpath is None else [str(pythonpath)]
    if (SOURCE_TREE / "pyproject.toml").is_file():
        paths.append(str(SOURCE_TREE))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_cli(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    """Run `servekit ARGS` to completion; stdout and stderr together in `.stdout`."""
    return subprocess.run(
        [*PYTHON_M_SERVEKIT, *args], cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=START_DEADLINE_S, check=False,
    )  # fmt: skip


@pytest.fixture
def start_cli(processes: list[subprocess.Popen[str]], tmp_path: Path) -> StartCli:
    """Start `servekit ARGS` in its own session; the `processes` fixture kills what is left."""

    def start(
        *args: str,
        cwd: Path = HERE,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = PYTHON_M_SERVEKIT,
    ) -> RunningCli:
        log = tmp_path / f"servekit-{len(processes)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [*command, *args], cwd=cwd, env=env or child_env(), stdout=out, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            )  # fmt: skip
        processes.append(process)
        return RunningCli(process, log)

    return start


def poll_until(condition: Callable[[], bool], what: str, cli: RunningCli, timeout: float) -> None:
    """Call `condition` until it is true; fail after `timeout` s or if servekit exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if cli.process.poll() is not None:
            raise AssertionError(f"servekit exited ({cli.process.returncode}) before {what}:\n{cli.output()}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s:\n{cli.output()}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:  # accepted just before the listener closed, then dropped
        return False
    return False


def wait_ready(cli: RunningCli, url: str) -> None:
    poll_until(lambda: answers(f"{url}/readyz"), "readiness", cli, START_DEADLINE_S)


def served_url(cli: RunningCli) -> str:
    """The URL from servekit's `serving TARGET at URL` line, once printed."""
    pattern = re.compile(r"^servekit: serving \S+ at (http://\S+)$", re.MULTILINE)
    poll_until(
        lambda: pattern.search(cli.output()) is not None, "'serving ... at URL' line", cli, START_DEADLINE_S
    )
    match = pattern.search(cli.output())
    assert match is not None
    return match.group(1)


def assert_lists_routes(output: str, url: str) -> None:
    assert re.search(rf"^servekit: serving \S+ at {re.escape(url)}$", output, re.MULTILINE), output
    for method, path in GREETER_ROUTES:
        route = rf"^\s+{method}\s+{re.escape(url + path)}$"
        assert re.search(route, output, re.MULTILINE), f"{method} {path} not listed:\n{output}"


@pytest.mark.parametrize(
    "command", [PYTHON_M_SERVEKIT, (str(CONSOLE_SCRIPT),)], ids=["python-m-servekit", "console-script"]
)
def test_version_prints_the_package_version(command: tuple[str, ...]) -> None:
    result = subprocess.run(
        [*command, "--version"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=START_DEADLINE_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"servekit {sk.__version__}"


@pytest.mark.parametrize("found_via", ["cwd", "pythonpath"])
def test_serve_module_target_prints_url_and_routes_and_answers(
    start_cli: StartCli, free_port: int, tmp_path: Path, found_via: str
) -> None:
    # From the cwd through the console script (whose sys.path lacks the cwd), or on PYTHONPATH elsewhere.
    if found_via == "cwd":
        cli = start_cli("serve", "apps.greeter:app", "--port", str(free_port), command=(str(CONSOLE_SCRIPT),))
    else:
        cli = start_cli(
            "serve", "apps.greeter:app", "--port", str(free_port), cwd=tmp_path, env=child_env(HERE)
        )
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)

    response = httpx.get(f"{url}/greet", params={"name": "module"}, timeout=10)

    assert response.status_code == 200
    assert response.json() == {"message": "hello module"}
    assert_lists_routes(cli.output(), url)


def test_serve_file_target_on_port_0_prints_the_port_it_picked(start_cli: StartCli) -> None:
    cli = start_cli("serve", "apps/greeter.py:app", "--port", "0")

    url = served_url(cli)
    wait_ready(cli, url)
    response = httpx.get(f"{url}/greet", params={"name": "file"}, timeout=10)

    assert not url.endswith(":0")
    assert response.status_code == 200
    assert response.json() == {"message": "hello file"}
    assert_lists_routes(cli.output(), url)


def test_a_bare_deployment_class_is_bound(start_cli: StartCli, free_port: int) -> None:
    cli = start_cli("serve", f"{APPS / 'greeter.py'}:Greeter", "--port", str(free_port))
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)

    response = httpx.get(f"{url}/greet", timeout=10)

    assert response.status_code == 200
    assert response.json() == {"message": "hello world"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("apps/missing.py:app", "file not found: 'apps/missing.py'"),
        ("apps.missing:app", "no module named 'apps.missing'"),
        ("no_such_package.module:app", "no module named 'no_such_package'"),
        ("apps/greeter.py:nope", "has no attribute 'nope'"),
        ("apps.greeter:nope", "has no attribute 'nope'"),
        ("apps/greeter.py:not_an_app", "not an app"),
        ("apps.missing_dependency:app", "importing 'apps.missing_dependency' failed: No module named 'apps.missing'"),
    ],
    ids=["missing-file", "missing-module", "missing-package", "missing-file-attribute",
         "missing-module-attribute", "not-an-app", "missing-dependency"],
)  # fmt: skip
def test_a_bad_target_fails_with_one_line_and_no_traceback(target: str, expected: str) -> None:
    result = run_cli("serve", target, "--port", "0")

    assert result.returncode == 1
    assert result.stdout.splitlines() == [result.stdout.strip()], result.stdout
    assert result.stdout.startswith("servekit: error: "), result.stdout
    assert expected in result.stdout


def test_a_constructor_that_raises_fails_naming_the_deployment() -> None:
    result = run_cli("serve", "apps/broken.py:app", "--port", "0")

    assert result.returncode == 1
    assert "Traceback" not in result.stdout, result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("servekit: error: "), result.stdout
    assert "'Unstartable'" in last
    assert "model weights are missing" in last
    assert result.stdout.count("servekit: error:") == 1


def test_a_port_in_use_fails_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "apps.greeter:app", "--port", str(port))

    assert result.returncode == 1
    assert "Traceback" not in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        f"servekit: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_sigterm_lets_the_in_flight_request_finish_refuses_new_ones_and_exits_0(
    start_cli: StartCli, free_port: int, tmp_path: Path
) -> None:
    cli = start_cli(
        "serve", "apps.greeter:app", "--port", str(free_port), "--grace-period", str(GRACE_PERIOD_S)
    )
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)
    flag = tmp_path / "release"
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(
            httpx.get, f"{url}/wait", params={"flag": str(flag)}, timeout=GRACE_PERIOD_S + 10
        )
        poll_until(lambda: ongoing(url) == 1, "request in flight", cli, START_DEADLINE_S)

        cli.process.send_signal(signal.SIGTERM)
        poll_until(lambda: refuses_connections(f"{url}/healthz"), "refused connection", cli, EXIT_DEADLINE_S)
        assert cli.process.poll() is None  # still draining: the request it holds has not answered
        flag.touch()
        response = in_flight.result(timeout=EXIT_DEADLINE_S)

    assert response.status_code == 200
    assert response.json() == {"released": str(flag)}
    assert cli.wait_exit(timeout=GRACE_PERIOD_S) == 0
    assert "servekit: stopped" in cli.output()


def ongoing(url: str) -> int:
    status = httpx.get(f"{url}/-/status", timeout=5).json()
    return int(status["deployments"]["Greeter"]["ongoing"])


def test_sigint_stops_cleanly(start_cli: StartCli, free_port: int) -> None:
    cli = start_cli("serve", "apps.greeter:app", "--port", str(free_port))
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)

    cli.process.send_signal(signal.SIGINT)

    assert cli.wait_exit() == 0
    assert "Traceback" not in cli.output()
    assert "servekit: stopped" in cli.output()
    assert refuses_connections(f"{url}/healthz")


@pytest.fixture
def reloadable_app(tmp_path: Path) -> Path:
    """A copy of `apps/reloadable.py` in a folder of its own, for the test to edit."""
    folder = tmp_path / "project"
    folder.mkdir()
    app = folder / "reloadable.py"
    shutil.copy(APPS / "reloadable.py", app)
    return app


def test_reload_redeploys_edited_code_without_dropping_requests(
    start_cli: StartCli, free_port: int, reloadable_app: Path
) -> None:
    cli = start_cli(
        "serve",
        "reloadable.py:app",
        "--reload",
        "--isolation",
        "process",
        "--port",
        str(free_port),
        cwd=reloadable_app.parent,
    )
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)
    assert httpx.get(f"{url}/version", timeout=10).json() == {"version": "v1"}
    workers_before = psutil.Process(cli.process.pid).children(recursive=True)
    assert workers_before, "--isolation process runs the replica in a worker process"

    failures: list[int] = []
    answers: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(f"{url}/version")
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    answers.add(response.json()["version"])

    load = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in load:
        thread.start()
    try:
        reloadable_app.write_text(reloadable_app.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        poll_until(lambda: version(url) == "v2", "reload to v2", cli, RELOAD_DEADLINE_S)
    finally:
        stop.set()
        for thread in load:
            thread.join(10)
    assert failures == [], "no request fails during a reload"
    assert answers == {"v1", "v2"}
    _, alive = psutil.wait_procs(workers_before, timeout=EXIT_DEADLINE_S)
    assert not [p for p in alive if still_running(p)], "the old worker was stopped"

    workers_after = psutil.Process(cli.process.pid).children(recursive=True)
    cli.process.send_signal(signal.SIGTERM)
    assert cli.wait_exit() == 0
    _, alive = psutil.wait_procs(workers_after, timeout=EXIT_DEADLINE_S)
    assert not [p for p in alive if still_running(p)], alive
    assert "Traceback" not in cli.output()
    assert refuses_connections(f"{url}/healthz")


def test_a_broken_edit_keeps_the_previous_version_serving(
    start_cli: StartCli, free_port: int, reloadable_app: Path
) -> None:
    cli = start_cli(
        "serve", "reloadable.py:app", "--reload", "--port", str(free_port), cwd=reloadable_app.parent
    )
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)
    reloadable_app.write_text(reloadable_app.read_text() + "\nraise ImportError('half-saved file')\n")
    poll_until(
        lambda: "reload failed" in cli.output(), "the failed reload to be reported", cli, RELOAD_DEADLINE_S
    )
    assert httpx.get(f"{url}/version", timeout=10).json() == {"version": "v1"}
    cli.process.send_signal(signal.SIGTERM)
    assert cli.wait_exit() == 0


def still_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def version(url: str) -> str | None:
    try:
        response = httpx.get(f"{url}/version", timeout=2)
    except httpx.TransportError:
        return None
    return str(response.json()["version"]) if response.status_code == 200 else None


@pytest.fixture
def split_app(tmp_path: Path) -> Path:
    """A copy of `apps/split/` (app.py: Greeter uses helpers.py; stages.py: Preprocess does not)."""
    folder = tmp_path / "split"
    shutil.copytree(APPS / "split", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_reload_rolls_only_the_deployments_whose_imported_modules_changed(
    start_cli: StartCli, free_port: int, split_app: Path
) -> None:
    cli = start_cli("serve", "app.py:app", "--reload", "--port", str(free_port), cwd=split_app)
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)
    assert greeting(url, "Ada") == "hello ada"
    assert "servekit: reloading on changes to app.py, helpers.py, stages.py" in cli.output()
    before = replica_ids(url)

    helpers = split_app / "helpers.py"
    helpers.write_text(helpers.read_text().replace('GREETING = "hello"', 'GREETING = "howdy there"'))
    poll_until(
        lambda: greeting(url, "Ada") == "howdy there ada", "the helper's edit served", cli, RELOAD_DEADLINE_S
    )

    assert (
        "servekit: helpers.py changed; rolling Greeter (code changed); unchanged: Preprocess" in cli.output()
    )
    after = replica_ids(url)
    assert after["Preprocess"] == before["Preprocess"], (
        "the deployment that does not import helpers.py kept its replica"
    )
    assert after["Greeter"] != before["Greeter"]

    # A new import (in a new folder) joins the watched files: editing it rolls Greeter again.
    (split_app / "words").mkdir()
    (split_app / "words" / "__init__.py").write_text("")
    lexicon = split_app / "words" / "lexicon.py"
    lexicon.write_text('WORD = "friend"\n')
    helpers.write_text(
        helpers.read_text().replace(
            'GREETING = "howdy there"', "from words.lexicon import WORD\n\nGREETING = WORD"
        )
    )
    poll_until(lambda: greeting(url, "Ada") == "friend ada", "the new import served", cli, RELOAD_DEADLINE_S)
    assert "servekit: now also watching words/__init__.py, words/lexicon.py" in cli.output()
    lexicon.write_text('WORD = "dear friend"\n')
    poll_until(
        lambda: greeting(url, "Ada") == "dear friend ada",
        "the new module's edit served",
        cli,
        RELOAD_DEADLINE_S,
    )

    assert (
        "servekit: words/lexicon.py changed; rolling Greeter (code changed); unchanged: Preprocess"
        in cli.output()
    )
    assert replica_ids(url)["Preprocess"] == before["Preprocess"]
    poll_until(lambda: redeploys(cli) == 3, "the last redeploy to finish", cli, RELOAD_DEADLINE_S)
    cli.process.send_signal(signal.SIGTERM)
    assert cli.wait_exit() == 0
    assert "Traceback" not in cli.output()


def test_a_helper_edit_that_fails_to_import_or_start_keeps_the_previous_version_serving(
    start_cli: StartCli, free_port: int, split_app: Path
) -> None:
    cli = start_cli("serve", "app.py:app", "--reload", "--port", str(free_port), cwd=split_app)
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)
    helpers = split_app / "helpers.py"
    working = helpers.read_text()

    helpers.write_text(working + "\nbroken = (\n")  # does not compile
    poll_until(lambda: failed_reloads(cli) == 1, "the failed import reported", cli, RELOAD_DEADLINE_S)
    assert greeting(url, "Ada") == "hello ada"
    helpers.write_text(working.replace('"""Called', 'raise RuntimeError("no weights")\n    """Called'))
    poll_until(lambda: failed_reloads(cli) == 2, "the failed start reported", cli, RELOAD_DEADLINE_S)
    assert "no weights" in cli.output()
    assert greeting(url, "Ada") == "hello ada"

    helpers.write_text(working.replace('GREETING = "hello"', 'GREETING = "hi again"'))
    poll_until(
        lambda: greeting(url, "Ada") == "hi again ada", "the fixed edit served", cli, RELOAD_DEADLINE_S
    )
    poll_until(lambda: redeploys(cli) == 1, "the redeploy to finish", cli, RELOAD_DEADLINE_S)
    cli.process.send_signal(signal.SIGTERM)
    assert cli.wait_exit() == 0


def redeploys(cli: RunningCli) -> int:
    return cli.output().count("servekit: redeployed\n")


def failed_reloads(cli: RunningCli) -> int:
    return cli.output().count("reload failed after helpers.py changed, still serving the previous version")


def greeting(url: str, name: str) -> str | None:
    try:
        response = httpx.get(f"{url}/greet", params={"name": name}, timeout=5)
    except httpx.TransportError:
        return None
    return str(response.json()["message"]) if response.status_code == 200 else None


def replica_ids(url: str) -> dict[str, list[str]]:
    deployments = httpx.get(f"{url}/-/status", timeout=5).json()["deployments"]
    return {name: [replica["id"] for replica in state["replicas"]] for name, state in deployments.items()}


def test_max_body_bytes_refuses_larger_bodies_with_413(start_cli: StartCli, free_port: int) -> None:
    cli = start_cli("serve", "apps.greeter:app", "--port", str(free_port), "--max-body-bytes", "1000")
    url = f"http://127.0.0.1:{free_port}"
    wait_ready(cli, url)

    at_limit = httpx.post(f"{url}/size", content=b"x" * 1000, timeout=10)
    over_limit = httpx.post(f"{url}/size", content=b"x" * 1001, timeout=10)

    assert at_limit.status_code == 200
    assert at_limit.json() == {"bytes": 1000}
    assert over_limit.status_code == 413
    assert over_limit.json()["error"]["type"] == "payload_too_large"
