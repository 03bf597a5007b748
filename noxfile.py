"""Quality gates: `nox -s lint smoke tests postgres browser` (what CI runs; `browser` drives the
dashboard in a headless Chromium), `nox -s docs`, `nox -s bundle_image` (where a container engine
is installed)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "smoke", "tests", "postgres", "browser"]

TORCH = "torch==2.13.0"  # the CPU build; any other spec may pull a multi-GB CUDA build


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit and integration tests with a coverage gate (the PostgreSQL ones run in `postgres`)."""
    session.install(TORCH)
    session.install("-e", ".[test,fast,ray,build,batch,ray-data]")
    session.run("python", "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    # two pytest processes side by side: the tests on the session Ray cluster, and all the others
    session.run("python", "tests/run_split.py", "-m", "not postgres and not browser", *session.posargs)
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python="3.11")
def postgres(session: nox.Session) -> None:
    """The tests marked `postgres` (the job store's, in tests/integration/test_jobs_*.py), against a
    PostgreSQL server their fixture starts from Debian's package (installed with apt-get when
    missing; as root the server runs as the postgres user)."""
    session.install("-e", ".[test,postgres]")
    files = sorted(str(path) for path in Path("tests/integration").glob("test_jobs_*.py"))
    session.run("pytest", "-m", "postgres", *files, *session.posargs)


@nox.session(python="3.11")
def browser(session: nox.Session) -> None:
    """The tests marked `browser`: the live dashboard in a headless Chromium (Debian's package,
    installed with apt-get when /usr/bin/chromium is missing), driven by playwright. Screenshots
    go to $SERVEKIT_TEST_ARTIFACTS (default: under pytest's basetemp)."""
    session.install("-e", ".[test,browser]")
    session.run("pytest", "-m", "browser", "tests/integration/test_dashboard_browser.py", *session.posargs)


@nox.session(python="3.11")
def smoke(session: nox.Session) -> None:
    """The default install alone (no extras): it serves correctly on the fast stack."""
    session.install(".")
    session.run("python", "tests/install/smoke.py")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) on everything, mypy --strict on the package, the docs build."""
    # Ray's and psycopg's types: the Ray backend and the PostgreSQL store are checked against them
    session.install("-e", ".[lint,docs,ray,batch,postgres,otel]")  # and OpenTelemetry's, for tracing
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("mkdocs", "build", "--strict", "--site-dir", session.create_tmp())


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on warnings."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")


@nox.session(python="3.11")
def bundle_image(session: nox.Session) -> None:
    """The textstats example's bundle built into a Docker image for real, run and called.

    Skipped where no container engine answers (`docker info` fails).
    """
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, check=False).returncode != 0:
        session.skip("no container engine answers (docker info)")
    session.install("-e", ".[build]", "httpx")
    session.run("python", "tests/install/bundle_image.py")
