"""`RunOptions`: how to run an app (which backend, and its settings), one frozen object.

`servekit.run`, `servekit.serve` and the CLI build one from their keywords (`RunKeywords`, kept
equal to the model by a test) and hand it to the backend registry; nothing else re-declares them.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servekit._runtime.gpus import parse_gpu_ids
from servekit._spec.config import Isolation
from servekit._telemetry.logs import LogFormat
from servekit.errors import DeploymentOptionError

LoopKind = Literal["auto", "asyncio", "uvloop"]
BACKEND_NAMES = ("local", "ray")
"""The backends servekit ships; `servekit._runtime.backends` imports each only when used."""


class RunOptions(BaseModel):
    """Where and how an app runs. Every field has a default, so `RunOptions()` is the local backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field("local", description="'local' (this machine) or 'ray' (Ray Serve on a Ray cluster).")
    address: str | None = Field(
        None,
        description=(
            "With backend='ray': the cluster to join ('auto', 'host:port', 'ray://head:10001'; default "
            "RAY_ADDRESS); without one servekit starts a local Ray for the app and stops it after."
        ),
    )
    isolation: Isolation | None = Field(
        None,
        description=(
            "Where replicas run for deployments that do not choose: 'in_process' or 'process' "
            "(a worker process each). Local backend only; every Ray replica is a process."
        ),
    )
    gpus: str | None = Field(
        None,
        description="GPU ids to plan with, like '0,1' ('' for none); overrides detection and SERVEKIT_GPUS.",
    )
    start_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Past this the start is abandoned, the app stopped and DeploymentStartError raised.",
    )
    wait_for_nodes: bool = Field(
        False,
        description=(
            "With backend='ray': when the app does not fit the cluster's nodes yet, deploy anyway and "
            "wait (up to start_timeout_s) for nodes to join, instead of failing at once."
        ),
    )
    loop: LoopKind = Field(
        "auto", description="The app's event loop: 'uvloop' when installed ('auto'), or 'asyncio'."
    )
    data_dir: str | None = Field(
        None,
        description=(
            "Where async jobs are kept: a directory (SQLite in WAL mode, large results as files; "
            "checked writable at start) or a 'postgresql://' URL. None keeps them in memory."
        ),
    )

    tracing: bool | None = Field(
        None,
        description=(
            "OpenTelemetry traces of every request across every hop (the 'otel' extra), configured by "
            "the standard OTEL_* variables: True traces, False never does, None (default) traces when "
            "OTEL_TRACES_EXPORTER names an exporter."
        ),
    )
    log_format: LogFormat | None = Field(
        None,
        description=(
            "'text' or 'json' (one object per line): servekit configures logging in this process and "
            "in every replica's, each line with its request id, trace id, deployment and replica. "
            "None leaves this process's logging as it is."
        ),
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKEND_NAMES:
            raise ValueError(
                f"backend {value!r} is unknown; use one of {', '.join(map(repr, BACKEND_NAMES))}"
            )
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, value: str | None) -> str | None:
        if value is not None:
            parse_gpu_ids(value, "gpus")
        return value


class RunKeywords(TypedDict, total=False):
    """The keywords of `servekit.run` and `servekit.serve` that choose where the app runs."""

    backend: str
    address: str | None
    isolation: Isolation | None
    gpus: str | None
    start_timeout_s: float | None
    wait_for_nodes: bool
    loop: LoopKind
    data_dir: str | None
    tracing: bool | None
    log_format: LogFormat | None


def run_options(**keywords: object) -> RunOptions:
    """Validate `keywords` into `RunOptions`; a bad one raises `DeploymentOptionError` naming it."""
    try:
        return RunOptions.model_validate(keywords)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(
                    f"unknown option {name!r}; valid options are: {', '.join(RunOptions.model_fields)}"
                )
            else:
                message = error["msg"].removeprefix("Value error, ")
                value = f"{name}={error['input']!r}"
                problems.append(message if message.startswith(value) else f"{value} is invalid: {message}")
        raise DeploymentOptionError("; ".join(problems)) from None
