"""`GuardOptions`: what the guards enforce, made once from `serve`'s keywords (or the CLI's flags).

Keywords in (``api_keys``, ``rate_limit``, ``cors``, header limits) plus the environment
(``SERVEKIT_API_KEYS_FILE``, ``SERVEKIT_API_KEYS``), a frozen, picklable `GuardOptions` out: the
keys document is read and checked here, so a bad one fails `serve` before the port opens, and
its text travels with the options to where the edge runs (a Ray ingress replica).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from servekit._http.guards.cors import Cors, cors_of
from servekit._http.guards.keys import KeySource, key_source, parse_keys
from servekit._http.guards.ratelimit import RateLimit, rate_limit_of
from servekit.errors import DeploymentOptionError

DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 32 * 1024


@dataclass(frozen=True)
class GuardOptions:
    """What the edge's guards enforce; the defaults are the safe ones (see docs/security.md)."""

    keys: KeySource | None = None
    rate_limit: RateLimit | None = None
    cors: Cors | None = None
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    reload_s: float = 1.0
    """How often (at most) the keys file is checked for changes, on the request path."""

    def __post_init__(self) -> None:
        if self.max_header_count < 1 or self.max_header_bytes < 1:
            raise DeploymentOptionError(
                f"max_header_count={self.max_header_count} and max_header_bytes={self.max_header_bytes} "
                "must be at least 1 (the defaults are 100 and 32768)"
            )


def guard_options(
    api_keys: str | os.PathLike[str] | None = None,
    rate_limit: str | RateLimit | None = None,
    cors: str | Sequence[str] | Cors | None = None,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    *,
    environ: Mapping[str, str] | None = None,
) -> GuardOptions:
    """The `GuardOptions` of `serve`'s keywords; the keys document is read and checked now."""
    return GuardOptions(
        keys=key_source(api_keys, os.environ if environ is None else environ),
        rate_limit=rate_limit_of(rate_limit),
        cors=cors_of(cors),
        max_header_count=max_header_count,
        max_header_bytes=max_header_bytes,
    )


LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def start_notes(options: GuardOptions, host: str) -> list[tuple[bool, str]]:
    """What to log at start about the guards: (is a warning, message) pairs."""
    if options.keys is not None:
        where = "" if options.keys.path is None else ", reloaded when the file changes"
        count = len(parse_keys(options.keys.text, options.keys.origin))
        if count == 0:
            return [(True, f"{options.keys.origin} holds no API keys: every guarded path answers 401")]
        return [(False, f"{count} API key{'s' * (count != 1)} from {options.keys.origin}{where}")]
    notes = [
        (
            False,
            "no API keys configured: the admin API (/-/status, /-/routers, /-/rollouts, the /-/jobs "
            "listing, /-/dashboard) answers only clients on this machine; see docs/security.md",
        )
    ]
    if host not in LOCAL_HOSTS and not host.startswith("127."):
        notes.append(
            (
                True,
                f"serving on {host} without API keys: any client that reaches this port can call the "
                "app's routes; pass api_keys= (or --api-keys FILE) to require keys",
            )
        )
    return notes
