"""Scopes parse from their text form and allow exactly the routes docs/security.md says."""

from __future__ import annotations

import pytest

from servekit._http.guards.paths import RouteClass
from servekit._http.guards.scopes import parse_scopes
from servekit.errors import DeploymentOptionError


@pytest.mark.parametrize(
    ("scopes", "route", "path", "allowed"),
    [
        (["invoke"], RouteClass.APP, "/anything/at/all", True),
        (["invoke:/predict*"], RouteClass.APP, "/predict", True),
        (["invoke:/predict*"], RouteClass.APP, "/predict/batch", True),
        (["invoke:/predict*"], RouteClass.APP, "/embed", False),
        (["invoke:/v1/*", "invoke:/health-of-model"], RouteClass.APP, "/health-of-model", True),
        (["invoke:/v1/*"], RouteClass.APP, "/v1", False),
        (["invoke:/v1/?"], RouteClass.APP, "/v1/a", True),
        (["invoke:/Predict"], RouteClass.APP, "/predict", False),
        (["invoke"], RouteClass.ADMIN, "/-/status", False),
        (["invoke"], RouteClass.METRICS, "/metrics", False),
        (["invoke:/x"], RouteClass.JOB, "/-/jobs/1", True),
        (["admin"], RouteClass.ADMIN, "/-/rollouts/clf/abort", True),
        (["admin"], RouteClass.JOB, "/-/jobs/1/result", True),
        (["admin"], RouteClass.APP, "/predict", False),
        (["admin"], RouteClass.METRICS, "/metrics", False),
        (["metrics"], RouteClass.METRICS, "/metrics", True),
        (["metrics"], RouteClass.JOB, "/-/jobs/1", False),
        (["metrics"], RouteClass.DOCS, "/docs", True),
        (["metrics"], RouteClass.HEALTH, "/healthz", True),
    ],
)
def test_scopes_allow_their_routes_only(
    scopes: list[str], route: RouteClass, path: str, allowed: bool
) -> None:
    assert parse_scopes(scopes).allows(route, path) is allowed


def test_a_decision_is_the_same_once_remembered() -> None:
    scopes = parse_scopes(["invoke:/a*"])
    assert [scopes.allows(RouteClass.APP, p) for p in ["/a", "/b", "/a", "/b"]] == [True, False, True, False]
    for n in range(1000):  # the memory of decisions stays bounded
        scopes.allows(RouteClass.APP, f"/a{n}")
    assert len(scopes._decided) <= 256


def test_scopes_render_back_to_their_text() -> None:
    assert parse_scopes(["metrics", "invoke:/a*", "admin", "invoke:/a*"]).describe() == [
        "invoke:/a*",
        "admin",
        "metrics",
    ]
    assert parse_scopes(["invoke", "invoke:/a"]).describe() == ["invoke"]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("read", "scope 'read' is unknown"),
        ("invoke:predict", "a route pattern starts with '/'"),
        ("admin:/x", "scope 'admin:/x' is unknown"),
        ("", "scope '' is unknown"),
    ],
)
def test_a_malformed_scope_is_named(text: str, fault: str) -> None:
    with pytest.raises(DeploymentOptionError, match="invoke:/predict") as error:
        parse_scopes([text])
    assert fault in str(error.value)
