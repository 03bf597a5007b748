"""API key scopes: parsed from their text form, and asked whether they allow a route.

Text in (``"invoke"``, ``"invoke:/predict*"``, ``"admin"``, ``"metrics"``), a frozen `Scopes` out;
`Scopes.allows(route_class, path)` is the whole authorization decision for a known key.

- ``invoke``: every app route; ``invoke:GLOB``: app routes whose path matches GLOB
  (``fnmatch`` rules, case-sensitive; ``*`` matches ``/`` too, so ``/v1/*`` covers ``/v1/a/b``).
- ``admin``: the admin API under ``/-/`` (status, routers, rollouts, the jobs listing, the dashboard),
  and any one async job.
- ``metrics``: ``/metrics``.

A job (``/-/jobs/{id}``) is open to a key that may invoke some route: its id is the capability.
Docs are open to any known key when the keys document does not make them public.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from servekit._http.guards.paths import RouteClass
from servekit.errors import DeploymentOptionError

SCOPE_FORMS = "'invoke', 'invoke:/predict*', 'admin' or 'metrics'"
_CACHED_PATHS = 256
"""How many paths each key remembers its invoke decision for (then it starts over)."""


@dataclass(frozen=True)
class Scopes:
    """What one API key may call."""

    invoke_all: bool = False
    invoke_patterns: tuple[str, ...] = ()
    admin: bool = False
    metrics: bool = False
    _match: Callable[[str], object] | None = field(init=False, repr=False, compare=False, default=None)
    _decided: dict[str, bool] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.invoke_patterns)
        object.__setattr__(self, "_match", re.compile(joined).match if joined else None)

    @property
    def invokes(self) -> bool:
        """Whether the key may invoke at least one app route."""
        return self.invoke_all or bool(self.invoke_patterns)

    def allows(self, route: RouteClass, path: str) -> bool:
        """Whether these scopes allow a request to `path`, a route of class `route`."""
        if route is RouteClass.APP:
            return self.invoke_all or self._invokes(path)
        if route is RouteClass.ADMIN:
            return self.admin
        if route is RouteClass.METRICS:
            return self.metrics
        if route is RouteClass.JOB:
            return self.admin or self.invokes
        return True  # HEALTH and DOCS: any known key

    def _invokes(self, path: str) -> bool:
        decided = self._decided
        allowed = decided.get(path)
        if allowed is None:
            allowed = self._match is not None and self._match(path) is not None
            if len(decided) >= _CACHED_PATHS:
                decided.clear()
            decided[path] = allowed
        return allowed

    def describe(self) -> list[str]:
        """The scopes in their text form."""
        described = ["invoke"] if self.invoke_all else [f"invoke:{p}" for p in self.invoke_patterns]
        return described + ["admin"] * self.admin + ["metrics"] * self.metrics


def parse_scopes(texts: Iterable[str]) -> Scopes:
    """`Scopes` from their text forms; a `DeploymentOptionError` names a malformed one."""
    invoke_all = admin = metrics = False
    patterns: list[str] = []
    for text in texts:
        kind, colon, pattern = text.strip().partition(":")
        if kind == "invoke" and not colon:
            invoke_all = True
        elif kind == "invoke" and pattern.startswith("/"):
            patterns.append(pattern)
        elif kind == "admin" and not colon:
            admin = True
        elif kind == "metrics" and not colon:
            metrics = True
        else:
            hint = " (a route pattern starts with '/')" if kind == "invoke" else ""
            raise DeploymentOptionError(f"scope {text!r} is unknown{hint}; use {SCOPE_FORMS}")
    return Scopes(invoke_all, tuple(dict.fromkeys(patterns)), admin, metrics)
