"""The guard in front of every route: header limits, who may call which path, and rate limits.

An ASGI scope in; the request passes to the app unchanged, or is answered with servekit's JSON
error: 431 (too many or too large headers), 401 (no key where one is needed, or a wrong, expired
or malformed one; with ``WWW-Authenticate``), 403 (the key lacks the scope; or, with no keys
configured, an admin path asked from another machine), 429 (the client's bucket is empty; with
``Retry-After``). Admitted requests under a rate limit get the ``RateLimit-*`` headers too.

One pass over the headers finds the key and sums their sizes; the key is looked up by its sha256
in a dict; the path's class comes from a few prefix checks (`servekit._http.guards.paths`).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._http.errors import error_response
from servekit._http.guards.keys import MAX_KEY_CHARS, ApiKey, KeyRing
from servekit._http.guards.options import GuardOptions
from servekit._http.guards.paths import RouteClass, classify
from servekit._http.guards.ratelimit import (
    RateLimit,
    TokenBuckets,
    limit_headers,
    retry_after_s,
)
from servekit.errors import (
    ForbiddenError,
    HeadersTooLargeError,
    RateLimitedError,
    RequestError,
    UnauthorizedError,
)

HOW_TO_SEND = "send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
_REALM = 'Bearer realm="servekit"'
_INVALID = _REALM + ', error="invalid_token"'
_AUTHORIZATION = b"authorization"
_API_KEY = b"x-api-key"
_KEY_HEADERS = frozenset({_AUTHORIZATION, _API_KEY})
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


class Gate:
    """The guard ASGI layer (see the module docstring). `copies`: edges sharing the rate limit."""

    def __init__(
        self,
        app: ASGIApp,
        options: GuardOptions,
        copies: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.options = options
        self.copies = copies
        self.ring = KeyRing(options.keys, options.reload_s) if options.keys is not None else None
        self.default_limit = None if options.rate_limit is None else options.rate_limit.share(copies)
        self.limited = options.rate_limit is not None or options.keys is not None
        self.max_header_count = options.max_header_count
        self.max_header_bytes = options.max_header_bytes
        self.key_buckets = TokenBuckets()
        self.ip_buckets = TokenBuckets()
        self._shares: dict[RateLimit, RateLimit] = {}
        self._clock = clock
        self._wall_clock = wall_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            extra = self._admit(scope)
        except RequestError as exc:
            await _refuse(exc, scope, receive, send)
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def _admit(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """Raise the refusal for this request, or return the headers to add to its response."""
        path = _route_path(scope)
        route = classify(path)
        credential = self._credential(scope["headers"], route is not RouteClass.HEALTH)
        if route is RouteClass.HEALTH:
            return None
        try:
            key = self._authorize(scope, route, path, credential)
        except (UnauthorizedError, ForbiddenError):
            if self.default_limit is not None:  # refusals count against the client's address
                self._take(None, self.default_limit, scope)
            raise
        if not self.limited:
            return None
        limit = self.default_limit if key is None or key.rate_limit is None else self._share(key.rate_limit)
        return None if limit is None else self._take(key, limit, scope)

    def _take(self, key: ApiKey | None, limit: RateLimit, scope: Scope) -> list[tuple[bytes, bytes]]:
        """Take a token from the key's bucket (or the address's); the headers, or a 429 if none is left."""
        now = self._clock()
        if key is not None:
            bucket = self.key_buckets.take(key.name, limit, now)
        else:
            bucket = self.ip_buckets.take(_client_host(scope), limit, now)
        headers = limit_headers(limit, bucket)
        if not bucket.admitted:
            who = f"API key {key.name!r}" if key is not None else f"client {_client_host(scope)}"
            wait = retry_after_s(limit, bucket)
            raise RateLimitedError(
                f"rate limit exceeded for {who} ({limit}); retry after {wait:.0f} s"
                if wait >= 10
                else f"rate limit exceeded for {who} ({limit}); retry after {wait:.2g} s",
                wait,
                {name.decode(): value.decode() for name, value in headers},
            )
        return headers

    def _credential(self, headers: list[tuple[bytes, bytes]], wanted: bool) -> bytes | None:
        """The API key the request carries, if `wanted` (one pass that also enforces the header limits)."""
        if len(headers) > self.max_header_count:
            raise HeadersTooLargeError(
                f"the request has {len(headers)} header fields; the limit is "
                f"{self.max_header_count} (max_header_count)"
            )
        size = 0
        found: list[tuple[bytes, bytes]] | None = None
        if wanted and self.ring is not None:
            for name, value in headers:
                size += len(name) + len(value)
                if name in _KEY_HEADERS:
                    found = [(name, value)] if found is None else [*found, (name, value)]
        else:
            for name, value in headers:
                size += len(name) + len(value)
        if size > self.max_header_bytes:
            raise HeadersTooLargeError(
                f"the request's headers take {size} bytes; the limit is "
                f"{self.max_header_bytes} (max_header_bytes)"
            )
        return None if found is None else _presented(found)

    def _authorize(
        self, scope: Scope, route: RouteClass, path: str, credential: bytes | None
    ) -> ApiKey | None:
        """The request's key (None: none needed, or none given on a public path), else the refusal."""
        if self.ring is None:
            if route is RouteClass.ADMIN and not _is_local(scope):
                raise ForbiddenError(
                    f"{path} is part of the admin API, which answers only clients on this machine while "
                    "no API keys are configured; configure keys (api_keys= or --api-keys, see "
                    "docs/security.md) and call it with a key that has the 'admin' scope"
                )
            return None
        keys = self.ring.current(self._clock())
        public = keys.is_public(path)
        if credential is None:
            if public:
                return None
            raise UnauthorizedError(f"{path} needs an API key; {HOW_TO_SEND}", _REALM)
        key = keys.lookup(credential)
        if key is None:
            raise UnauthorizedError("the API key is not valid (unknown or revoked)", _INVALID)
        if key.expires_at is not None and key.expires_at <= self._wall_clock():
            raise UnauthorizedError(f"API key {key.name!r} has expired; ask for a new one", _INVALID)
        if not public and not key.scopes.allows(route, path):
            needed = _needed_scope(route, path)
            raise ForbiddenError(
                f"API key {key.name!r} may not call {path}: it needs the {needed!r} scope "
                f"(it has {', '.join(key.scopes.describe()) or 'none'})",
                f'{_REALM}, error="insufficient_scope", scope="{needed}"',
            )
        return key

    def _share(self, limit: RateLimit) -> RateLimit:
        if self.copies <= 1:
            return limit
        shared = self._shares.get(limit)
        if shared is None:
            shared = self._shares[limit] = limit.share(self.copies)
        return shared


def _presented(found: list[tuple[bytes, bytes]]) -> bytes:
    """The key of `x-api-key`, else of a Bearer `Authorization`; another scheme is left to the app
    when `x-api-key` is there, and refused when it is not."""
    if len(found) == 1:  # the usual case: one header
        name, value = found[0]
        return _well_formed(value.strip() if name == _API_KEY else _bearer(value))
    values = dict(found)
    if len(values) < len(found):
        raise UnauthorizedError(f"the request repeats a key header; {HOW_TO_SEND} once", _INVALID)
    api_key, authorization = values.get(_API_KEY), values.get(_AUTHORIZATION)
    if api_key is None:
        assert authorization is not None
        return _well_formed(_bearer(authorization))
    key = _well_formed(api_key.strip())
    scheme, _, token = authorization.strip().partition(b" ") if authorization is not None else (b"", b"", b"")
    if scheme.lower() == b"bearer" and token.strip() != key:
        raise UnauthorizedError(f"the request carries two different API keys; {HOW_TO_SEND} once", _INVALID)
    return key


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        shown = scheme[:20].decode("latin-1")
        raise UnauthorizedError(
            f"the Authorization scheme {shown!r} is not supported; {HOW_TO_SEND}", _INVALID
        )
    return token.strip()


def _well_formed(key: bytes) -> bytes:
    if not key:
        raise UnauthorizedError(f"the API key is empty; {HOW_TO_SEND}", _INVALID)
    if len(key) > MAX_KEY_CHARS or _VISIBLE_ASCII.fullmatch(key) is None:
        raise UnauthorizedError(
            f"the API key is malformed: it must be at most {MAX_KEY_CHARS} visible ASCII characters", _INVALID
        )
    return key


def _needed_scope(route: RouteClass, path: str) -> str:
    if route is RouteClass.APP:
        return f"invoke:{path}"
    if route is RouteClass.JOB:
        return "invoke"
    return str(route.value)


def _route_path(scope: Scope) -> str:
    """The path the app routes on (without a `root_path` the front mounted it under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _is_local(scope: Scope) -> bool:
    """Whether the client connects from this machine (a loopback address)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]).partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def _refuse(exc: RequestError, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":  # refused before accept: the server answers 403
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
        return
    await error_response(exc, Request(scope))(scope, receive, send)
