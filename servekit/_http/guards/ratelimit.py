"""Rate limits as token buckets: a limit's text form, the bucket arithmetic, and its headers.

A `RateLimit` is parsed from text like ``"100/s burst 200"``. `TokenBuckets` keeps one bucket per
client (an API key's name, or an IP address) and answers `take(client, limit, now)`: the clock is
passed in, nothing here reads one. A bucket holds up to `burst` tokens and refills at the limit's
rate; a request takes one token, or is refused when none is left. Memory stays bounded: a bucket
full again is the same as no bucket, so sweeps forget those, and past `max_clients` the oldest go.

`limit_headers` renders a bucket as the IETF draft's ``RateLimit-Limit`` (the burst),
``RateLimit-Remaining`` (whole tokens left) and ``RateLimit-Reset`` (seconds until full again),
plus ``RateLimit-Policy`` (``burst;w=seconds to refill from empty``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

from servekit.errors import DeploymentOptionError

logger = logging.getLogger("servekit.guards")

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_UNITS |= {"h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_UNIT_NAMES = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}
_FORM = re.compile(
    r"^\s*(?P<requests>\d+(?:\.\d+)?)\s*/\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)"
    r"\s*(?:,?\s*burst\s+(?P<burst>\d+))?\s*$"
)
EXAMPLE = "'100/s burst 200' or '600/min'"


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` per `per_s` seconds on average per client, and `burst` at once.

    `burst` defaults to `requests` (rounded up). Parse the text form with `RateLimit.parse`:
    ``"100/s"``, ``"100/s burst 200"``, ``"600/min"``, ``"5/10s burst 1"``.
    """

    requests: float
    per_s: float = 1.0
    burst: int | None = None
    rate: float = field(init=False, repr=False, compare=False, default=0.0)
    """Tokens added per second."""
    capacity: int = field(init=False, repr=False, compare=False, default=0)
    """The most tokens a bucket holds: the largest burst admitted at once."""
    _fixed_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not (self.requests > 0 and self.per_s > 0 and (self.burst is None or self.burst >= 1)):
            raise DeploymentOptionError(
                f"rate limit {self.requests:g}/{self.per_s:g}s burst {self.burst} must admit something: "
                f"requests and per_s above 0, burst at least 1; write it like {EXAMPLE}"
            )
        rate = self.requests / self.per_s
        capacity = self.burst if self.burst is not None else max(1, math.ceil(self.requests))
        window = max(1, math.ceil(capacity / rate))
        fixed = (
            (b"ratelimit-limit", b"%d" % capacity),
            (b"ratelimit-policy", b"%d;w=%d" % (capacity, window)),
        )
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "_fixed_headers", fixed)

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """The limit `text` writes, like ``"100/s burst 200"``; `DeploymentOptionError` if malformed."""
        found = _FORM.match(text.lower())
        unit = _unit_seconds(found["unit"]) if found else None
        if found is None or unit is None:
            raise DeploymentOptionError(
                f"rate limit {text!r} is malformed; write it like {EXAMPLE} "
                "(units: s, min, h, day; burst: the most requests at once)"
            )
        per_s = unit * float(found["count"] or 1)
        return cls(float(found["requests"]), per_s, int(found["burst"]) if found["burst"] else None)

    def share(self, copies: int) -> RateLimit:
        """What each of `copies` edges enforces so that together they admit about this limit."""
        if copies <= 1:
            return self
        return RateLimit(self.requests / copies, self.per_s, max(1, math.ceil(self.capacity / copies)))

    def __str__(self) -> str:
        per = _UNIT_NAMES.get(self.per_s, f"{self.per_s:g}s")
        return f"{self.requests:g}/{per} burst {self.capacity}"


def _unit_seconds(unit: str) -> float | None:
    """Seconds in `unit` (``s``, ``min``, ``hours``, ...); None for an unknown one (``ms`` included)."""
    if unit not in _UNITS and len(unit) > 3 and unit.endswith("s"):
        unit = unit[:-1]
    return _UNITS.get(unit)


def rate_limit_of(value: str | RateLimit | None) -> RateLimit | None:
    """`value` as a `RateLimit` (text is parsed), or None."""
    return RateLimit.parse(value) if isinstance(value, str) else value


class Bucket:
    """One client's tokens as of `stamp`, and whether its last request was admitted."""

    __slots__ = ("admitted", "full_at", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.full_at = stamp
        self.admitted = True


class TokenBuckets:
    """A token bucket per client, bounded in number: see the module docstring."""

    def __init__(self, max_clients: int = 100_000, sweep_s: float = 10.0) -> None:
        self.max_clients = max_clients
        self.sweep_s = sweep_s
        self._buckets: dict[str, Bucket] = {}
        self._next_sweep = -math.inf
        self._warned = False

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, limit: RateLimit, now: float) -> Bucket:
        """Take one token from `client`'s bucket at time `now`; the bucket says if it was admitted."""
        if now >= self._next_sweep:
            self.sweep(now)
        bucket = self._buckets.get(client)
        capacity = limit.capacity
        if bucket is None:
            bucket = self._add(client, capacity, now)
        rate = limit.rate
        tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.admitted = tokens >= 1.0
        if bucket.admitted:
            tokens -= 1.0
        bucket.tokens = tokens
        bucket.stamp = now
        bucket.full_at = now + (capacity - tokens) / rate
        return bucket

    def sweep(self, now: float) -> None:
        """Forget the buckets that are full again by `now` (a new one would be the same)."""
        self._next_sweep = now + self.sweep_s
        full = [client for client, bucket in self._buckets.items() if bucket.full_at <= now]
        for client in full:
            del self._buckets[client]

    def _add(self, client: str, capacity: int, now: float) -> Bucket:
        if len(self._buckets) >= self.max_clients:
            self.sweep(now)
            if len(self._buckets) >= self.max_clients:
                self._forget_oldest(len(self._buckets) - self.max_clients + 1)
        bucket = self._buckets[client] = Bucket(float(capacity), now)
        return bucket

    def _forget_oldest(self, count: int) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "rate limits: more than %d clients at once; forgetting the oldest buckets", self.max_clients
            )
        for client in list(self._buckets)[:count]:
            del self._buckets[client]


def limit_headers(limit: RateLimit, bucket: Bucket) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-*`` response headers for `bucket` under `limit`."""
    limit_header, policy_header = limit._fixed_headers
    reset = max(0, math.ceil(bucket.full_at - bucket.stamp))
    return [
        limit_header,
        (b"ratelimit-remaining", b"%d" % bucket.tokens),
        (b"ratelimit-reset", b"%d" % reset),
        policy_header,
    ]


def retry_after_s(limit: RateLimit, bucket: Bucket) -> float:
    """Seconds until `bucket` holds a whole token again."""
    return max(0.0, (1.0 - bucket.tokens) / limit.rate)
