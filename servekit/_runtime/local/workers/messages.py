"""The typed messages between the server and a worker process.

Server to worker: `Init`, `Request`, `Cancel`, `Probe`, `ConfigureBatching`, `Stop`, and the answers to the
worker's own handle calls (`Reply`, `Chunk`, `End` with the call's id).
Worker to server: `Started` or `StartFailed`, then `Reply` / `Chunk` / `End` for requests,
`Cancelled` for each `Cancel` once that call has stopped running, `ProbeResult`, a `Reply` to
`ConfigureBatching`, and `HandleRequest` / `Cancel` for calls the worker's user code makes to
other deployments. Ids are chosen by the side that starts the exchange; each side keeps its own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from servekit._replica.context import ReplicaContext
from servekit._replica.request_context import RequestContext
from servekit._spec.config import BatchOptions
from servekit._telemetry.logs import LogFormat
from servekit._telemetry.tracing import TracingSettings


class Init(NamedTuple):
    """Everything a worker needs to build its replica."""

    context: ReplicaContext
    target: bytes
    """The user's class or function, cloudpickled (so `__main__` and notebook code works)."""
    is_function: bool
    init_args: bytes
    """Cloudpickled `(args, kwargs)`; bound deployments appear as `HandleRef`s."""
    sys_path: list[str]
    methods: dict[str, dict[str, bool]]
    """For each deployment of the app: its methods and whether each streams (for handles)."""
    gpu_fraction: float
    cpu_ids: tuple[int, ...] | None
    max_threads: int
    batching: dict[str, BatchOptions]
    """The deployment's per-method batch option overrides."""
    tracing: TracingSettings | None = None
    """How the worker traces (None: it does not)."""
    log_format: LogFormat | None = None
    """How the worker writes log lines: 'json', or 'text' (None)."""


class Started(NamedTuple):
    """The replica's constructor returned; the worker takes requests."""

    pid: int


class StartFailed(NamedTuple):
    """The replica's constructor raised."""

    error: BaseException
    traceback: str


class Request(NamedTuple):
    """Run `method` (server to worker), or another deployment's method (`HandleRequest`)."""

    id: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    stream: bool
    context: RequestContext | None = None
    """The request the call serves (its id and routing keys), current while the method runs."""
    model_id: str | None = None
    """The multiplexed model id the call carries."""


class HandleRequest(NamedTuple):
    """User code in the worker calls another deployment through a handle."""

    id: int
    deployment: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    stream: bool
    context: RequestContext | None = None
    """The request the worker's code was serving when it made the call."""
    model_id: str | None = None
    """The multiplexed model id the call carries."""


class RecordOutcomes(NamedTuple):
    """Worker to server: outcomes user code recorded (`record_outcome`) while serving request `request_id`."""

    request_id: str
    outcomes: list[tuple[str, float]]


class Reply(NamedTuple):
    """The outcome of a unary call, or the error that ended a stream."""

    id: int
    ok: bool
    value: Any


class Chunk(NamedTuple):
    """One item of a stream."""

    id: int
    value: Any


class End(NamedTuple):
    """A stream finished normally."""

    id: int


class Cancel(NamedTuple):
    """The caller gave up on call `id` (timeout, disconnect)."""

    id: int


class Cancelled(NamedTuple):
    """Worker to server: call `id` runs no more (the answer to every `Cancel`, also when it had ended).

    A sync call's thread cannot be stopped, so this comes when the thread returns; until then
    the server counts the call as abandoned and keeps its slot taken.
    """

    id: int


class Probe(NamedTuple):
    """Run the health check and report batch stats."""

    id: int
    health: bool


class ProbeResult(NamedTuple):
    """Health (None when healthy, else the error), each batched method's stats, the bound models,
    and a snapshot of the worker's batch queues and user metrics (prometheus_client families)."""

    id: int
    error: BaseException | None
    batch_stats: dict[str, dict[str, Any]]
    models: dict[str, Any] | None = None
    metrics: list[Any] | None = None


class ConfigureBatching(NamedTuple):
    """Apply new per-method batch option overrides in place; answered by a `Reply` (None or the error)."""

    id: int
    batching: dict[str, BatchOptions]


class Stop(NamedTuple):
    """Release the replica and exit; in-flight work has drained already."""


class Undecodable(NamedTuple):
    """Made by the receiver (never sent) when a frame's pickle fails to load.

    The frame header still carries the message's id and whether it started an exchange, so only
    that call fails; the link and every other call go on.
    """

    id: int
    starts_exchange: bool
    error: BaseException


STARTS_EXCHANGE = (Request, HandleRequest, Probe, ConfigureBatching)
"""Messages the receiver must answer (with a `Reply`, `Chunk`/`End` or `ProbeResult`)."""
