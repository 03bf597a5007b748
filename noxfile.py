"""Quality gates: `nox -s lint smoke tests` (what CI runs), `nox -s docs`, `nox -s bundle_image`
(where a container engine is installed)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "smoke", "tests"]

TORCH = "torch==2.13.0"  # the CPU build; any other spec may pull a multi-GB CUDA build


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit and integration tests with a coverage gate."""
    session.install(TORCH)
    session.install("-e", ".[test,fast,ray,build]")
    session.run("python", "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python="3.11")
def smoke(session: nox.Session) -> None:
    """The default install alone (no extras): it serves correctly on the fast stack."""
    session.install(".")
    session.run("python", "tests/install/smoke.py")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) on everything, mypy --strict on the package, the docs build."""
    session.install("-e", ".[lint,docs,ray]")  # Ray's types: the Ray backend is checked against them
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
