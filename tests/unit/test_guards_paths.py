"""Every path the edge serves falls in the route class docs/security.md gives it."""

from __future__ import annotations

import pytest

from servekit._http.guards.paths import RouteClass, classify

CLASSES = [
    ("/healthz", RouteClass.HEALTH),
    ("/readyz", RouteClass.HEALTH),
    ("/-/healthz", RouteClass.HEALTH),
    ("/-/readyz", RouteClass.HEALTH),
    ("/docs", RouteClass.DOCS),
    ("/docs/swagger-ui.css", RouteClass.DOCS),
    ("/openapi.json", RouteClass.DOCS),
    ("/metrics", RouteClass.METRICS),
    ("/-/status", RouteClass.ADMIN),
    ("/-/routers", RouteClass.ADMIN),
    ("/-/routers/clf/weights", RouteClass.ADMIN),
    ("/-/rollouts", RouteClass.ADMIN),
    ("/-/rollouts/clf/promote", RouteClass.ADMIN),
    ("/-/dashboard", RouteClass.ADMIN),
    ("/-/dashboard/events", RouteClass.ADMIN),
    ("/-/jobs", RouteClass.ADMIN),
    ("/-/jobs/", RouteClass.ADMIN),
    ("/-/jobs/7f3a", RouteClass.JOB),
    ("/-/jobs/7f3a/result", RouteClass.JOB),
    ("/-/jobs/7f3a/other", RouteClass.ADMIN),
    ("/-/a-future-builtin", RouteClass.ADMIN),
    ("/predict", RouteClass.APP),
    ("/", RouteClass.APP),
    ("/v2/models/double/infer", RouteClass.APP),
    ("/metrics/extra", RouteClass.APP),
    ("/docsearch", RouteClass.APP),
    ("/healthz/x", RouteClass.APP),
]


@pytest.mark.parametrize(("path", "expected"), CLASSES)
def test_each_path_has_its_documented_class(path: str, expected: RouteClass) -> None:
    assert classify(path) is expected
