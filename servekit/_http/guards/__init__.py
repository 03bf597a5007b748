"""Guards of the HTTP edge: API keys with scopes, rate limits, CORS and header limits.

`guard_layers(options, copies)` gives the ASGI layers `build_asgi_app` installs, outermost first:
CORS (only when configured: a preflight needs no key, and refusals carry CORS headers) and the
`Gate` (always: header limits and the admin API on localhost are the safe defaults; keys and rate
limits when configured). TLS is the HTTP server's (uvicorn's or Ray Serve's proxy's), not a layer.
"""

from __future__ import annotations

from starlette.middleware import Middleware

from servekit._http.guards.cors import Cors, cors_layer
from servekit._http.guards.gate import Gate
from servekit._http.guards.options import GuardOptions, guard_options, start_notes
from servekit._http.guards.ratelimit import RateLimit


def guard_layers(options: GuardOptions, copies: int = 1) -> list[Middleware]:
    """The guard layers for `options`; `copies` edges (Ray ingress replicas) share the rate limits."""
    layers = [] if options.cors is None else [cors_layer(options.cors)]
    return [*layers, Middleware(Gate, options=options, copies=copies)]


__all__ = ["Cors", "GuardOptions", "RateLimit", "guard_layers", "guard_options", "start_notes"]
