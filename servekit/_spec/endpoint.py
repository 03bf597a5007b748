"""Markers the HTTP edge reads: `@endpoint` on ingress methods, `@ingress` for a user ASGI app."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from servekit._spec.jobs import JobOptions
from servekit.errors import DeploymentOptionError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

EndpointMode = Literal["sync", "async"]
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
ENDPOINT_ATTR = "__servekit_endpoint__"
ASGI_ATTR = "__servekit_asgi_app__"


@dataclass(frozen=True)
class EndpointSpec:
    """Where an ingress method is served (a path and its HTTP methods), and how it validates."""

    path: str
    methods: tuple[str, ...]
    strict: bool | None = None
    """Validate without lax coercions; None: the app's default (`build_asgi_app(strict=...)`)."""
    mode: EndpointMode = "sync"
    """"async": every request becomes a job (202 + Location); "sync" answers in the response,
    unless the request says `Prefer: respond-async`."""
    jobs: JobOptions = field(default_factory=JobOptions)
    """How this endpoint's jobs are queued, retried and kept."""


def endpoint(
    path: str,
    methods: Sequence[str] = ("POST",),
    *,
    strict: bool | None = None,
    mode: EndpointMode = "sync",
    jobs: JobOptions | None = None,
) -> Callable[[F], F]:
    """Serve an ingress deployment's method at `path` for the given HTTP `methods`.

    Parameters come from the JSON body (pydantic models, dicts, lists), the path
    (`/items/{item_id}`) or the query string (scalars); a parameter annotated
    `starlette.requests.Request` receives the raw request.

    `strict=True` validates them without lax coercions (`false` or `"1"` is no number, `"yes"`
    no boolean), `strict=False` with them; the default, None, follows the app's setting.
    """
    if not path.startswith("/"):
        raise DeploymentOptionError(f"endpoint path must start with '/', like '/{path}'; got {path!r}")
    upper = tuple(method.upper() for method in methods)
    unknown = sorted(set(upper) - _HTTP_METHODS)
    if strict is not None and not isinstance(strict, bool):
        raise DeploymentOptionError(f"endpoint {path!r}: strict must be True, False or None; got {strict!r}")
    if unknown or not upper:
        raise DeploymentOptionError(
            f"endpoint {path!r}: unknown HTTP methods {unknown or list(methods)}; "
            f"use some of {sorted(_HTTP_METHODS)}"
        )

    if mode not in ("sync", "async"):
        raise DeploymentOptionError(f"endpoint {path!r}: mode must be 'sync' or 'async'; got {mode!r}")
    if jobs is not None and not isinstance(jobs, JobOptions):
        raise DeploymentOptionError(
            f"endpoint {path!r}: jobs takes servekit.JobOptions(...), got {type(jobs).__name__}"
        )

    def mark(func: F) -> F:
        setattr(func, ENDPOINT_ATTR, EndpointSpec(path, upper, strict, mode, jobs or JobOptions()))
        return func

    return mark


def endpoint_spec(func: object) -> EndpointSpec | None:
    """The `EndpointSpec` set by `@endpoint` on `func`, if any."""
    spec = getattr(func, ENDPOINT_ATTR, None)
    return spec if isinstance(spec, EndpointSpec) else None


def ingress(asgi_app: Any) -> Callable[[C], C]:
    """Serve a user's Starlette or FastAPI app as the ingress of a deployment class.

    servekit's built-in routes (`/healthz`, `/readyz`, `/-/status`) stay in front; every other
    request goes to `asgi_app`. Route handlers reach the deployment's instance (and so its
    handles) with `servekit.deployment_instance(request)`.
    """
    if not callable(asgi_app):
        raise DeploymentOptionError(f"ingress() takes an ASGI app, got {type(asgi_app).__name__}")

    def mark(cls: C) -> C:
        setattr(cls, ASGI_ATTR, asgi_app)
        return cls

    return mark


def asgi_app_of(target: object) -> Any | None:
    """The ASGI app attached with `@ingress`, if any."""
    return getattr(target, ASGI_ATTR, None)


_IDEMPOTENT_ATTR = "__servekit_idempotent__"


def idempotent(func: F) -> F:
    """Mark a deployment method as safe to run twice.

    When the replica running a call to it dies (a crash, kill -9), the call is retried once on
    another replica instead of failing with 503. Without the mark, such calls fail fast.
    """
    setattr(func, _IDEMPOTENT_ATTR, True)
    return func


def is_idempotent(func: object) -> bool:
    """Whether `func` was marked with `@idempotent`."""
    return bool(getattr(func, _IDEMPOTENT_ATTR, False))
