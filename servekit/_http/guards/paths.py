"""Which class of route a request path belongs to, so guards can decide who may call it.

A path in, a `RouteClass` out; nothing here reads keys or clients. The classes (also the table
in docs/security.md, pinned by tests/unit/test_guards_paths.py):

| path | class |
|---|---|
| ``/healthz``, ``/readyz``, ``/-/healthz``, ``/-/readyz`` | ``HEALTH``: always open (probes) |
| ``/docs``, ``/docs/...``, ``/openapi.json`` | ``DOCS`` |
| ``/metrics`` | ``METRICS`` |
| ``/-/jobs/{id}``, ``/-/jobs/{id}/result`` | ``JOB``: one async job, polled by its submitter |
| every other ``/-/...``: ``/-/status``, ``/-/routers...``, ``/-/rollouts...``, | ``ADMIN`` |
| the ``/-/jobs`` listing, ``/-/dashboard...`` | |
| everything else | ``APP``: the app's own routes |

Built-in paths added later under ``/-/`` are admin paths until classified otherwise: the safe side.
"""

from __future__ import annotations

import enum


class RouteClass(enum.Enum):
    """What kind of route a path is, for authorization."""

    HEALTH = "health"
    DOCS = "docs"
    METRICS = "metrics"
    JOB = "job"
    ADMIN = "admin"
    APP = "app"


HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/-/healthz", "/-/readyz"})
DOCS_PATHS = frozenset({"/docs", "/openapi.json"})
METRICS_PATH = "/metrics"
ADMIN_PREFIX = "/-/"
_JOBS_PREFIX = "/-/jobs/"


_TOP_LEVEL = {
    **dict.fromkeys(HEALTH_PATHS, RouteClass.HEALTH),
    **dict.fromkeys(DOCS_PATHS, RouteClass.DOCS),
    METRICS_PATH: RouteClass.METRICS,
}


def classify(path: str) -> RouteClass:
    """The class of the route at `path` (an ASGI scope's ``path``, not URL-encoded)."""
    if path.startswith(ADMIN_PREFIX):
        return _builtin_class(path)
    found = _TOP_LEVEL.get(path)
    if found is not None:
        return found
    return RouteClass.DOCS if path.startswith("/docs/") else RouteClass.APP


def _builtin_class(path: str) -> RouteClass:
    if path in HEALTH_PATHS:
        return RouteClass.HEALTH
    if path.startswith(_JOBS_PREFIX) and _is_one_job(path[len(_JOBS_PREFIX) :]):
        return RouteClass.JOB
    return RouteClass.ADMIN


def _is_one_job(rest: str) -> bool:
    """``{id}`` or ``{id}/result``: one job's status, cancel or result."""
    job_id, _, tail = rest.partition("/")
    return bool(job_id) and tail in ("", "result")
