"""CORS: which browser origins may call the app, as Starlette's `CORSMiddleware` enforces it.

`cors=` on `serve` (or ``--cors-origin`` on the CLI) in, a `Cors` out; `cors_layer` makes the layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from servekit.errors import DeploymentOptionError

_ORIGIN = re.compile(r"^https?://[^/\s]+$")
EXPOSED = (
    "x-request-id",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
)


@dataclass(frozen=True)
class Cors:
    """Which browser origins may call the app, and with what (Cross-Origin Resource Sharing).

    `allow_origins` lists origins like ``"https://app.example.com"`` (or ``"*"`` for any);
    `allow_origin_regex` matches more. Preflight answers allow `allow_methods` and
    `allow_headers` (by default the API-key headers and JSON bodies) for `max_age` seconds;
    responses let the page read `expose_headers` (the request id and the rate-limit headers).
    """

    allow_origins: Sequence[str] = ()
    allow_origin_regex: str | None = None
    allow_methods: Sequence[str] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: Sequence[str] = ("authorization", "content-type", "x-api-key", "x-request-id")
    allow_credentials: bool = False
    expose_headers: Sequence[str] = EXPOSED
    max_age: int = 600

    def __post_init__(self) -> None:
        bad = [o for o in self.allow_origins if o != "*" and not _ORIGIN.match(o)]
        if bad:
            raise DeploymentOptionError(
                f"CORS origin {bad[0]!r} is malformed; an origin is a scheme and host without a path, "
                "like 'https://app.example.com' or 'http://localhost:3000' (or '*' for any)"
            )
        if not self.allow_origins and self.allow_origin_regex is None:
            raise DeploymentOptionError(
                "CORS needs allow_origins (like ['https://app.example.com']) or a regex"
            )


def cors_of(value: str | Sequence[str] | Cors | None) -> Cors | None:
    """`value` as a `Cors`: an origin or a list of origins allows those; None (or []) is no CORS."""
    if value is None or isinstance(value, Cors):
        return value
    origins = (value,) if isinstance(value, str) else tuple(value)
    return Cors(allow_origins=origins) if origins else None


def cors_layer(cors: Cors) -> Middleware:
    """Starlette's CORS middleware configured by `cors`."""
    return Middleware(
        CORSMiddleware,
        allow_origins=list(cors.allow_origins),
        allow_origin_regex=cors.allow_origin_regex,
        allow_methods=list(cors.allow_methods),
        allow_headers=list(cors.allow_headers),
        allow_credentials=cors.allow_credentials,
        expose_headers=list(cors.expose_headers),
        max_age=cors.max_age,
    )
