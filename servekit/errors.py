"""servekit's errors: one tree, each error carrying the HTTP status it maps to.

```
ServekitError                      500  base of everything servekit raises
├── DeploymentOptionError          -    a bad option, raised at decoration time (also ValueError)
├── GraphError                     -    a graph that cannot be built (also ValueError)
├── BundleError                    -    a bundle cannot be built, verified or served
├── ModelStoreError                -    a model store operation failed (names model, version, fix)
│   ├── ModelNotFoundError         404  an unknown model, version or tag
│   ├── ModelIntegrityError        -    a cached or stored version's sha256 does not match
│   ├── ModelStoreUnavailableError 503  the store cannot be reached
│   └── ModelLoadError             503  a model (or multiplexed model id) failed to load
├── DeploymentStartError           -    a replica's constructor failed while starting the app
│   └── InsufficientResourcesError -    the replicas do not fit the GPUs / cluster at hand
├── RequestError                   4xx  the client's request is wrong
│   ├── BadRequestError            400  malformed body (e.g. invalid JSON)
│   ├── NotFoundError              404  no route for the path
│   ├── MethodNotAllowedError      405  route exists, method does not
│   ├── UnauthorizedError          401  no API key, or a wrong, expired or malformed one
│   ├── ForbiddenError             403  the key (or the client's address) may not use this path
│   ├── PayloadTooLargeError       413  body over the configured limit
│   ├── RateLimitedError           429  the client's token bucket is empty (carries retry_after_s)
│   ├── HeadersTooLargeError       431  too many request headers, or too many bytes of them
│   ├── RolloutStateError          409  a rollout action its state does not allow (promote a finished canary)
│   ├── JobNotFoundError           404  no async job has that id (never existed, or expired)
│   ├── JobNotReadyError           409  a job's result asked for before it succeeded (carries its state)
│   └── RequestValidationError     422  body/query/path do not match the schema
├── UserCodeError                  500  user code raised; see `servekit.errors.UserCodeError`
├── OverloadedError                503  replicas busy and the queue full (carries retry_after_s)
│   └── JobQueueFullError          503  an endpoint's async job queue is full; nothing was stored
├── JobStoreError                  -    the job store cannot be used (read-only, disk full, bad URL)
├── JobFailedError                 -    an awaited job failed (carries its error object) or was cancelled
├── BatchAbortedError              -    batch scoring stopped: more failed rows than max_failures
├── DeploymentUnavailableError     503  no replica can take the request (stopped, not started)
│   └── ReplicaDiedError           503  the replica serving the request died (crash, kill -9)
└── RequestTimeoutError            504  request_timeout_s elapsed; the work was cancelled
```

Every error renders to the same JSON body, `{"error": {"type": ..., "message": ...}}`
plus error-specific fields (see `ServekitError.to_dict`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class ServekitError(Exception):
    """Base of every error servekit raises; `status_code` is the HTTP status it maps to."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The `"error"` object of the JSON error body."""
        return {"type": self.error_type, "message": self.message}

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for the error response."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[ServekitError], state: dict[str, Any]) -> ServekitError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class DeploymentOptionError(ServekitError, ValueError):
    """A deployment option has a bad value or an unknown name."""

    error_type = "deployment_option_error"


class GraphError(ServekitError, ValueError):
    """The application graph is invalid: a cycle, no ingress, or arguments that do not fit."""

    error_type = "graph_error"


class BundleError(ServekitError):
    """A bundle cannot be built, verified or served; the message names the file and the fix."""

    error_type = "bundle_error"


class ModelStoreError(ServekitError):
    """A model store operation failed; the message names the model, the version and the fix."""

    error_type = "model_store_error"


class ModelNotFoundError(ModelStoreError):
    """An unknown model, version or tag."""

    status_code = 404
    error_type = "model_not_found"


class ModelIntegrityError(ModelStoreError):
    """A version's content does not match its sha256 (a corrupted cache or store)."""

    error_type = "model_integrity_error"


class ModelStoreUnavailableError(ModelStoreError):
    """The model store cannot be reached."""

    status_code = 503
    error_type = "model_store_unavailable"


class ModelLoadError(ModelStoreError):
    """A model version, or a multiplexed model id, failed to load; other models keep serving."""

    status_code = 503
    error_type = "model_load_error"


class DeploymentStartError(ServekitError):
    """A replica failed to start (its constructor raised)."""

    error_type = "deployment_start_error"


class InsufficientResourcesError(DeploymentStartError):
    """The replicas need more than the machine or cluster has, at start or when adding a replica."""

    error_type = "insufficient_resources"


class RequestError(ServekitError):
    """The client's request is wrong; never the server's fault."""

    status_code = 400
    error_type = "bad_request"


class BadRequestError(RequestError):
    """The body could not be parsed (e.g. malformed JSON)."""


class NotFoundError(RequestError):
    """No route matches the path."""

    status_code = 404
    error_type = "not_found"


class MethodNotAllowedError(RequestError):
    """The route exists but does not accept this HTTP method."""

    status_code = 405
    error_type = "method_not_allowed"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLargeError(RequestError):
    """The request body is larger than the server's limit."""

    status_code = 413
    error_type = "payload_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"request body exceeds the limit of {limit_bytes} bytes; "
            "send a smaller body or raise max_body_bytes"
        )
        self.limit_bytes = limit_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "limit_bytes": self.limit_bytes}


class UnauthorizedError(RequestError):
    """The request carries no API key where one is needed, or a wrong, expired or malformed one.

    `challenge` is the `WWW-Authenticate` header (RFC 6750's Bearer scheme).
    """

    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str, challenge: str = 'Bearer realm="servekit"') -> None:
        super().__init__(message)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class ForbiddenError(RequestError):
    """The request's API key lacks the scope the path needs, or the client may not reach it."""

    status_code = 403
    error_type = "forbidden"

    def __init__(self, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {} if self.challenge is None else {"WWW-Authenticate": self.challenge}


class RateLimitedError(RequestError):
    """The client (its API key, or its address) has used up its rate limit for now.

    `retry_after_s` is when the next request will be admitted; `limit_headers` are the
    `RateLimit-*` headers of the response.
    """

    status_code = 429
    error_type = "too_many_requests"

    def __init__(
        self, message: str, retry_after_s: float, limit_headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit_headers = dict(limit_headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after_s": self.retry_after_s}

    def headers(self) -> dict[str, str]:
        return {**self.limit_headers, "Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class HeadersTooLargeError(RequestError):
    """The request has more header fields, or more bytes of them, than the server accepts."""

    status_code = 431
    error_type = "request_header_fields_too_large"


class RolloutStateError(RequestError):
    """A rollout cannot take this action in its current state (e.g. promote a canary that ended)."""

    status_code = 409
    error_type = "rollout_state_conflict"


class JobNotFoundError(RequestError):
    """No async job has the id asked for (it never existed, or its result expired)."""

    status_code = 404
    error_type = "job_not_found"


class JobNotReadyError(RequestError):
    """A job's result was asked for before the job succeeded; `state` is where it is now."""

    status_code = 409
    error_type = "job_not_ready"

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "state": self.state}


class RequestValidationError(RequestError):
    """The request does not match the endpoint's schema; `errors` is pydantic's list."""

    status_code = 422
    error_type = "validation_error"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": self.errors}


class UserCodeError(ServekitError):
    """User code in a replica raised.

    Callers normally see the user's own exception type: servekit re-raises it as an instance
    of a subclass of both that type and `UserCodeError`, whose message names the deployment.
    Over HTTP it becomes a 500 with an `error_id` that is also in the server log.
    """

    error_type = "internal_error"


class OverloadedError(ServekitError):
    """Every replica is at max_ongoing_requests and the queue is at max_queued_requests.

    `retry_after_s` estimates when a retry is likely to be admitted (how long the queue takes to
    drain at the rate requests complete); it is also the `Retry-After` header, in whole seconds.
    """

    status_code = 503
    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after_s": self.retry_after_s}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class JobQueueFullError(OverloadedError):
    """An endpoint's async job queue holds its limit of unfinished jobs; the job was not stored."""

    error_type = "job_queue_full"


class JobStoreError(ServekitError):
    """The job store cannot be used: a read-only or full data directory, or an unreachable database."""

    error_type = "job_store_error"


class JobFailedError(ServekitError):
    """An awaited async job failed after its last attempt, or was cancelled; `error` says why."""

    error_type = "job_failed"

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "job_error": self.error}


class BatchAbortedError(ServekitError):
    """Batch scoring stopped because more rows failed than `max_failures`; finished chunks are kept."""

    error_type = "batch_aborted"


class DeploymentUnavailableError(ServekitError):
    """The deployment has no replica that can take the request (stopped or shutting down)."""

    status_code = 503
    error_type = "unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class ReplicaDiedError(DeploymentUnavailableError):
    """The replica serving the request died before answering; methods marked `idempotent` retry once."""

    error_type = "replica_died"


class RequestTimeoutError(ServekitError, TimeoutError):
    """The request ran past the deployment's request_timeout_s; its work was cancelled."""

    status_code = 504
    error_type = "timeout"


__all__ = [
    "BadRequestError",
    "BatchAbortedError",
    "DeploymentOptionError",
    "DeploymentStartError",
    "DeploymentUnavailableError",
    "ForbiddenError",
    "GraphError",
    "HeadersTooLargeError",
    "InsufficientResourcesError",
    "JobFailedError",
    "JobNotFoundError",
    "JobNotReadyError",
    "JobQueueFullError",
    "JobStoreError",
    "MethodNotAllowedError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelStoreError",
    "ModelStoreUnavailableError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ReplicaDiedError",
    "RequestError",
    "RequestTimeoutError",
    "RequestValidationError",
    "RolloutStateError",
    "ServekitError",
    "UnauthorizedError",
    "UserCodeError",
]
