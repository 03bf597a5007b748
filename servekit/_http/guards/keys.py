"""API keys: the keys document, hashed at rest, and the key ring a server reads it into.

The keys document (YAML or JSON; a file, or the text of ``SERVEKIT_API_KEYS``) in, a `KeySet` out:

```yaml
keys:
  - name: web-frontend              # unique; shown in logs and errors, never the key
    hash: "sha256:9f86d0818..."     # sha256 of the key; `servekit keys create` writes it
    scopes: ["invoke:/predict*"]    # invoke[:/glob], admin, metrics
    expires: 2026-12-31T00:00:00Z   # optional; after it the key gets 401
    rate_limit: "50/s burst 100"    # optional; this key's own limit
public: ["/docs", "/docs/*", "/openapi.json"]   # paths served without a key (this is the default)
```

Keys are 256-bit random tokens (``sk_`` + 43 URL-safe characters), so one sha256 is safe at rest
and cheap per request: a request's key is hashed and looked up in a dict by its digest. Salted slow
hashes (bcrypt) protect low-entropy passwords, and would cost milliseconds per request.

`KeyRing` holds the current `KeySet` of a `KeySource` and, for a file, re-reads it when its size,
mtime or inode changed, checked at most once per `reload_s` (on the request path: one `stat`). A
file that stops parsing keeps the last good keys, with an error in the log.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servekit._http.guards.ratelimit import RateLimit
from servekit._http.guards.scopes import Scopes, parse_scopes
from servekit.errors import DeploymentOptionError

logger = logging.getLogger("servekit.guards")

KEY_PREFIX = "sk_"
HASH_PREFIX = "sha256:"
ENV_DOCUMENT = "SERVEKIT_API_KEYS"
"""The environment variable holding a keys document (YAML or JSON) itself."""
ENV_FILE = "SERVEKIT_API_KEYS_FILE"
"""The environment variable naming a keys file (watched for changes, like ``api_keys=``)."""
DEFAULT_PUBLIC = ("/docs", "/docs/*", "/openapi.json")
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 512
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_REMEMBERED_PATHS = 1024
"""How many paths a key set remembers the public decision of (then it starts over)."""


def new_key() -> str:
    """A new random API key (256 bits), like ``sk_3q2-...``."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: bytes) -> bytes:
    """The digest a key is looked up by."""
    return hashlib.sha256(key).digest()


def hash_key(key: str) -> str:
    """The text form of a key's hash, as the keys document holds it: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


class KeyEntry(BaseModel):
    """One API key in the keys document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="A unique name for the key, shown in logs and errors.")
    hash: str = Field(description="'sha256:' and the hex sha256 of the key (never the key itself).")
    scopes: list[str] = Field(
        min_length=1, description="What the key may call: 'invoke', 'invoke:/glob*', 'admin', 'metrics'."
    )
    expires: dt.datetime | dt.date | None = Field(
        None, description="When the key stops working (UTC unless the time says otherwise)."
    )
    rate_limit: str | None = Field(None, description="This key's own rate limit, like '50/s burst 100'.")

    @field_validator("hash")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not _HASH.match(value):
            raise ValueError(f"must be 'sha256:' and 64 lowercase hex digits; got {value[:20]!r}...")
        return value


class KeysDocument(BaseModel):
    """The keys document: the keys, and the paths served without one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[KeyEntry] = Field(default_factory=list, description="The API keys.")
    public: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PUBLIC),
        description="Path globs served without a key (health probes always are).",
    )


@dataclass(frozen=True)
class ApiKey:
    """A known API key, as the guard uses it."""

    name: str
    digest: bytes
    scopes: Scopes
    expires_at: float | None = None
    """Unix time after which the key is refused; None: never."""
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class KeySet:
    """The keys of one version of the keys document, by digest, and its public paths."""

    by_digest: Mapping[bytes, ApiKey]
    public: tuple[str, ...] = DEFAULT_PUBLIC
    _public: Callable[[str], object] | None = field(init=False, repr=False, compare=False, default=None)
    _decided: dict[str, bool] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.public)
        object.__setattr__(self, "_public", re.compile(joined).match if joined else None)

    def lookup(self, key: bytes) -> ApiKey | None:
        """The key `key` is, or None for an unknown one."""
        digest = key_digest(key)
        found = self.by_digest.get(digest)
        if found is None or not hmac.compare_digest(found.digest, digest):
            return None
        return found

    def is_public(self, path: str) -> bool:
        """Whether `path` is served without a key."""
        public = self._decided.get(path)
        if public is None:
            public = self._public is not None and self._public(path) is not None
            if len(self._decided) >= _REMEMBERED_PATHS:
                self._decided.clear()
            self._decided[path] = public
        return public

    def __len__(self) -> int:
        return len(self.by_digest)


def parse_keys(text: str, origin: str) -> KeySet:
    """The `KeySet` of a keys document's `text`; a `DeploymentOptionError` names `origin` and the fault."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise DeploymentOptionError(f"API keys in {origin} are not valid YAML or JSON: {exc}") from None
    if isinstance(raw, list):
        raw = {"keys": raw}
    try:
        document = KeysDocument.model_validate(raw)
    except ValidationError as exc:
        raise DeploymentOptionError(f"API keys in {origin}: {_first_problem(exc)}") from None
    return key_set(document, origin)


def key_set(document: KeysDocument, origin: str) -> KeySet:
    """The `KeySet` of a validated document; duplicate names or hashes are refused."""
    found: dict[bytes, ApiKey] = {}
    names: set[str] = set()
    for index, entry in enumerate(document.keys):
        where = f"API keys in {origin}, key {entry.name!r} (#{index + 1})"
        if entry.name in names:
            raise DeploymentOptionError(f"{where}: the name is used twice; names must be unique")
        key = _api_key(entry, where)
        if key.digest in found:
            raise DeploymentOptionError(f"{where}: the same hash as key {found[key.digest].name!r}")
        names.add(entry.name)
        found[key.digest] = key
    return KeySet(found, tuple(document.public))


def _api_key(entry: KeyEntry, where: str) -> ApiKey:
    try:
        scopes = parse_scopes(entry.scopes)
        limit = RateLimit.parse(entry.rate_limit) if entry.rate_limit is not None else None
    except DeploymentOptionError as exc:
        raise DeploymentOptionError(f"{where}: {exc}") from None
    digest = bytes.fromhex(entry.hash.removeprefix(HASH_PREFIX))
    return ApiKey(entry.name, digest, scopes, expires_at(entry.expires), limit)


def expires_at(when: dt.datetime | dt.date | None) -> float | None:
    """`when` as Unix time; a date is its midnight, a time without a zone is UTC."""
    if when is None:
        return None
    if not isinstance(when, dt.datetime):
        when = dt.datetime(when.year, when.month, when.day)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the document"
    return f"{where}: {error['msg']} (see docs/security.md for the format)"


@dataclass(frozen=True)
class KeySource:
    """Where a server's keys come from: a file it watches, or a document's text.

    `text` is the document as read when the server started, so an edge that cannot read `path`
    (a Ray node without the file) still has the keys, without the reloads.
    """

    origin: str
    text: str
    path: str | None = None


def key_source(api_keys: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> KeySource | None:
    """The keys `api_keys` names, else ``SERVEKIT_API_KEYS_FILE``'s file, else ``SERVEKIT_API_KEYS``'s
    document; None when none is set. The document is read and checked now."""
    path = os.fspath(api_keys) if api_keys is not None else environ.get(ENV_FILE) or None
    if path is not None:
        source = KeySource(path, _read(path), os.path.abspath(path))
    elif environ.get(ENV_DOCUMENT):
        source = KeySource(f"${ENV_DOCUMENT}", environ[ENV_DOCUMENT])
    else:
        return None
    parse_keys(source.text, source.origin)
    return source


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise DeploymentOptionError(f"cannot read the API keys file {path!r}: {exc.strerror}") from None


class KeyRing:
    """The current keys of a `KeySource`, re-read when its file changes (see the module docstring)."""

    def __init__(self, source: KeySource, reload_s: float = 1.0) -> None:
        self.source = source
        self.reload_s = reload_s
        self.keys = parse_keys(source.text, source.origin)
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._watching = source.path is not None and self._stat(source.path) is not None
        if self._watching:
            self._reload()  # the file as it is now, which may be newer than `text`
        elif source.path is not None:
            logger.warning(
                "API keys: cannot read %s here; serving the keys it held at start, without reloads",
                source.path,
            )

    def current(self, now: float) -> KeySet:
        """The keys to use at monotonic time `now`, re-read first if the file changed."""
        if self._watching and now >= self._next_check:
            self._next_check = now + self.reload_s
            self.check()
        return self.keys

    def check(self) -> bool:
        """Re-read the file now if it changed; whether the keys changed."""
        changed = self._reload()
        if changed:
            logger.info("API keys: reloaded %d keys from %s", len(self.keys), self.source.path)
        return changed

    def _reload(self) -> bool:
        path = self.source.path
        stamp = None if path is None else self._stat(path)
        if path is None or stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = parse_keys(Path(path).read_text(), path)
        except (DeploymentOptionError, OSError) as exc:
            logger.error("API keys: keeping the previous keys; %s", exc)
            return False
        self.keys = keys
        return True

    @staticmethod
    def _stat(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)


def describe_entry(entry: KeyEntry, now: dt.datetime | None = None) -> dict[str, Any]:
    """One key's public facts (never its hash in full), for `servekit keys list`."""
    expiry = expires_at(entry.expires)
    moment = (now or dt.datetime.now(dt.UTC)).timestamp()
    state = "expired" if expiry is not None and expiry <= moment else "active"
    return {
        "name": entry.name,
        "scopes": entry.scopes,
        "expires": None if expiry is None else dt.datetime.fromtimestamp(expiry, dt.UTC).isoformat(),
        "rate_limit": entry.rate_limit,
        "state": state,
        "hash": entry.hash[: len(HASH_PREFIX) + 12] + "...",
    }
