"""Find the HTTP routes of an ingress deployment: `@endpoint` methods, a raw `__call__`, or an ASGI app."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from servekit._http.params import EndpointParams, analyse
from servekit._replica.replica import method_kind
from servekit._spec.deployment import Deployment
from servekit._spec.endpoint import EndpointMode, EndpointSpec, asgi_app_of, endpoint_spec
from servekit._spec.jobs import JobOptions
from servekit.errors import DeploymentOptionError

_DEFAULT = EndpointSpec("/", ("POST",))


@dataclass(frozen=True)
class EndpointRoute:
    """One route to a replica method, with its parameter binding prepared."""

    path: str
    methods: tuple[str, ...]
    method_name: str
    func: Callable[..., Any]
    params: EndpointParams
    streaming: bool
    mode: EndpointMode = "sync"
    jobs: JobOptions = field(default_factory=JobOptions)

    @property
    def job_target(self) -> str:
        """The route as an async job's target, like "POST /summarize"."""
        return f"{self.methods[0]} {self.path}"


@dataclass(frozen=True)
class IngressRoutes:
    """Everything the ingress serves besides the built-in routes."""

    endpoints: list[EndpointRoute]
    raw_call: bool
    """Whether `__call__(request)` takes every request not matched by an endpoint."""
    asgi_app: Any | None
    """A user ASGI app (from `@ingress`) that takes every request not matched by an endpoint."""


def ingress_routes(deployment: Deployment, strict: bool = False) -> IngressRoutes:
    """Discover the routes of `deployment` as the ingress of an app.

    `strict` is the app's default validation mode, for endpoints that do not choose their own.
    """
    target = deployment.target
    name = deployment.name
    if deployment.is_function:
        members: list[tuple[str, Callable[..., Any]]] = [("__call__", target)]
    else:
        members = [(n, m) for n, m in inspect.getmembers(target, callable) if endpoint_spec(m)]
    endpoints = [_route(n, m, endpoint_spec(m), name, strict) for n, m in members if endpoint_spec(m)]
    asgi_app = None if deployment.is_function else asgi_app_of(target)
    call = target if deployment.is_function else _own_call(typing.cast(type, target))
    raw_call = not endpoints and asgi_app is None and call is not None and _takes_request_only(call)
    if not endpoints and not raw_call and call is not None and asgi_app is None:
        endpoints = [_route("__call__", call, _DEFAULT, name, strict)]
    return IngressRoutes(endpoints, raw_call, asgi_app)


def _route(
    method_name: str, func: Callable[..., Any], spec: EndpointSpec | None, owner: str, app_strict: bool
) -> EndpointRoute:
    spec = spec or _DEFAULT
    strict = app_strict if spec.strict is None else spec.strict
    params = analyse(func, spec.path, owner, strict=strict)
    streaming = method_kind(func).streaming
    if streaming and spec.mode == "async":
        raise DeploymentOptionError(
            f"{owner}.{method_name}: a streaming (generator) endpoint cannot be mode='async'; "
            "return the whole result instead, or use mode='sync'"
        )
    return EndpointRoute(spec.path, spec.methods, method_name, func, params, streaming, spec.mode, spec.jobs)


def _own_call(cls: type) -> Callable[..., Any] | None:
    call = getattr(cls, "__call__", None)  # noqa: B004
    return call if inspect.isfunction(call) else None


def _takes_request_only(func: Callable[..., Any]) -> bool:
    params = analyse(func, "/", getattr(func, "__qualname__", "ingress"))
    return params.request_param is not None and not (
        params.body_params or params.query_params or params.raw_body_param
    )
