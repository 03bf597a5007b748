"""`RayDispatcher`: servekit handles calling through Ray Serve's `DeploymentHandle`s.

Every servekit deployment runs as a `RayReplica`, whose `call` and `stream` methods take the
user method's name and arguments; this dispatcher is the calling side, in replicas and in
the driver alike. Ray's errors become servekit's: the user's exception (already named after
its deployment by the replica) comes back as it was raised, a dead replica is
`ReplicaDiedError` (retried once on another replica for `@idempotent` methods), Ray's
backpressure is `OverloadedError`.

`request_timeout_s` is applied here, where the caller waits (see `servekit._replica.deadline`):
past it the caller gets `RequestTimeoutError` at once. The Ray request is left to the replica,
which applies the same bound: cancelling it would free Ray's slot while sync code still runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.exceptions import DeploymentUnavailableError as RayDeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from servekit._replica.deadline import next_within_timeout, within_timeout
from servekit._replica.multiplex import outgoing_model_id
from servekit._replica.request_context import outgoing_request
from servekit._runtime.ray.options import RETRY_AFTER_S
from servekit.errors import (
    DeploymentUnavailableError,
    NotFoundError,
    OverloadedError,
    ReplicaDiedError,
    RequestTimeoutError,
    ServekitError,
)

RayHandle = DeploymentHandle[Any]

CALL_METHOD = "call"
STREAM_METHOD = "stream"


class RayDispatcher:
    """Calls servekit deployments of one Ray Serve app through Ray handles.

    `handles` gives Ray's handle for a deployment name (None for one it does not know);
    `methods` maps each deployment to its public methods and whether each streams;
    `idempotent` lists the methods safe to retry on another replica; `timeouts` gives each
    deployment's `request_timeout_s`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handles: Callable[[str], RayHandle | None],
        methods: Mapping[str, Mapping[str, bool]],
        idempotent: Mapping[str, frozenset[str]],
        timeouts: Mapping[str, float | None] | None = None,
    ) -> None:
        self._loop = loop
        self._timeouts = timeouts or {}
        self._handles = handles
        self._methods = methods
        self._idempotent = idempotent
        self._unary: dict[str, RayHandle] = {}
        self._streams: dict[str, RayHandle] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop handle calls are started on."""
        return self._loop

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a unary method on a replica of `deployment` and return its result (within its timeout)."""
        timeout = self._timeouts.get(deployment)
        return await within_timeout(self._call(deployment, method, args, kwargs), timeout, deployment, method)

    async def _call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        handle = self._unary.get(deployment) or self._options(deployment, stream=False)
        context = outgoing_request()  # the request context travels as the replica call's 4th argument
        model_id = outgoing_model_id()
        if model_id:  # Ray Serve routes it to a replica holding the model
            handle = handle.options(multiplexed_model_id=model_id)
        try:
            return await _translated(handle.remote(method, args, kwargs, context), deployment)
        except ReplicaDiedError:
            if method not in self._idempotent.get(deployment, frozenset()):
                raise
        return await _translated(handle.remote(method, args, kwargs, context), deployment)  # once more

    async def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Run a generator method on a replica of `deployment`; yield its chunks, each within its timeout."""
        handle = self._streams.get(deployment) or self._options(deployment, stream=True)
        model_id = outgoing_model_id()
        if model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        chunks = cast(
            DeploymentResponseGenerator[Any], handle.remote(method, args, kwargs, outgoing_request())
        )
        timeout = self._timeouts.get(deployment)
        finished = False
        sent = 0
        try:
            while True:
                try:
                    chunk = await next_within_timeout(chunks, timeout, deployment, method, sent)
                except StopAsyncIteration:
                    finished = True
                    return
                except RequestTimeoutError:
                    finished = True  # the replica's own bound ends the stream there
                    raise
                except Exception as exc:
                    finished = True
                    raise translate(exc, deployment) from None
                sent += 1
                yield chunk
        finally:
            if not finished:  # the caller stopped early: release the replica
                chunks.cancel()  # type: ignore[no-untyped-call]

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` of `deployment` is a generator; raises `NotFoundError` if it has none such."""
        methods = self._methods.get(deployment)
        if methods is None:
            raise NotFoundError(f"no deployment named {deployment!r}; deployments: {sorted(self._methods)}")
        if method not in methods:
            raise NotFoundError(
                f"deployment {deployment!r} has no public method {method!r}; it has: {sorted(methods)}"
            )
        return methods[method]

    def _options(self, deployment: str, *, stream: bool) -> RayHandle:
        base = self._handles(deployment)
        if base is None:
            raise NotFoundError(f"no deployment named {deployment!r}; deployments: {sorted(self._methods)}")
        if stream:
            handle = self._streams[deployment] = base.options(method_name=STREAM_METHOD, stream=True)
        else:
            handle = self._unary[deployment] = base.options(method_name=CALL_METHOD)
        return handle


async def _translated(response: Any, deployment: str) -> Any:
    try:
        return await response
    except Exception as exc:
        raise translate(exc, deployment) from None


def translate(exc: BaseException, deployment: str) -> BaseException:
    """Ray's exception `exc` from a call to `deployment` as the error servekit callers expect."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, RayTaskError | RayActorError | RayServeException):
            return translate(cause, deployment)
        if isinstance(cause, BaseException):
            return cause
        return ServekitError(f"deployment {deployment!r} failed: {exc}")
    for kind, convert in _TRANSLATIONS:
        if isinstance(exc, kind):
            return convert(exc, deployment)
    return exc


def _overloaded(exc: BaseException, deployment: str) -> BaseException:
    return OverloadedError(
        f"deployment {deployment!r} is overloaded: every replica is at max_ongoing_requests and "
        f"the queue is full ({exc}); retry later",
        retry_after_s=RETRY_AFTER_S,
    )


def _died(exc: BaseException, deployment: str) -> BaseException:
    return ReplicaDiedError(
        f"deployment {deployment!r}: the replica serving the request died ({_first_line(exc)})"
    )


def _unavailable(exc: BaseException, deployment: str) -> BaseException:
    return DeploymentUnavailableError(f"deployment {deployment!r} is unavailable: {_first_line(exc)}")


def _cancelled(exc: BaseException, deployment: str) -> BaseException:
    return asyncio.CancelledError()


_TRANSLATIONS: tuple[tuple[type[BaseException], Callable[[BaseException, str], BaseException]], ...] = (
    (BackPressureError, _overloaded),
    (RayActorError, _died),
    (RayDeploymentUnavailableError, _unavailable),
    (TaskCancelledError, _cancelled),
)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
