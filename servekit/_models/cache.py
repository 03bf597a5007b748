"""`ModelCache`: this node's local copies of model versions, verified, bounded, evicted LRU.

In: a version's manifest and the store that holds it. Out: a local path to its files. Each
version is downloaded once per node (processes on the node share the cache: a file lock
serialises their downloads), into ``<cache>/<content sha256>/``, and verified by sha256 on
every use. When the cache grows past its size limit, the least recently used versions that
no live process has pinned are deleted. `evictable` is the pure decision, tested alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from servekit._models.store import ModelStore, VersionInfo, file_sha256
from servekit.errors import ModelIntegrityError

DEFAULT_MAX_BYTES = 20 * 1024**3


def default_cache_dir() -> Path:
    """``SERVEKIT_MODEL_CACHE``, else ``~/.servekit/cache/models``."""
    configured = os.environ.get("SERVEKIT_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".servekit" / "cache" / "models"


def default_max_bytes() -> int:
    """``SERVEKIT_MODEL_CACHE_MAX_BYTES``, else 20 GiB."""
    return int(os.environ.get("SERVEKIT_MODEL_CACHE_MAX_BYTES") or DEFAULT_MAX_BYTES)


@dataclass(frozen=True)
class CacheEntry:
    """One cached version, as eviction sees it."""

    key: str
    size: int
    last_used: float
    pinned: bool


def evictable(entries: Sequence[CacheEntry], max_bytes: int, keep: str | None = None) -> list[str]:
    """The keys to delete, least recently used first, so the rest fits `max_bytes`.

    Pinned entries and `keep` (the one just fetched) are never chosen, even if the rest then
    still does not fit.
    """
    total = sum(entry.size for entry in entries)
    chosen: list[str] = []
    for entry in sorted(entries, key=lambda entry: entry.last_used):
        if total <= max_bytes:
            break
        if entry.pinned or entry.key == keep:
            continue
        chosen.append(entry.key)
        total -= entry.size
    return chosen


class ModelCache:
    """A folder of verified local copies of model versions, at most `max_bytes` of unpinned ones."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None) -> None:
        self.root = root or default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes

    def get(self, store: ModelStore, info: VersionInfo, pin: str | None = None) -> Path:
        """The local path of `info`'s files, downloaded first if needed; verified against its sha256.

        With a `pin` (a name unique in this process, like a replica id), the version is kept
        from eviction while this process lives, or until `unpin(info, pin)`.
        """
        entry = self.root / info.sha256
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f"{info.sha256}.lock"):
            if (entry / "complete.json").exists():
                self._verify(info, entry)
            else:
                self._download(store, info, entry)
            if pin is not None:
                self._pins(entry).mkdir(exist_ok=True)
                (self._pins(entry) / _pin_name(pin)).touch()
            (entry / "complete.json").touch()  # the mtime is the last use
        self.evict(keep=info.sha256)
        return entry / "content" / info.basename

    def unpin(self, info: VersionInfo, pin: str) -> None:
        """Drop the pin `pin` of this process on `info`'s copy (evictable once no pin is left)."""
        with contextlib.suppress(FileNotFoundError):
            (self._pins(self.root / info.sha256) / _pin_name(pin)).unlink()

    def _pins(self, entry: Path) -> Path:
        return entry / "pins"

    def _download(self, store: ModelStore, info: VersionInfo, entry: Path) -> None:
        staging = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            store.fetch(info, staging / "content")
            (staging / "complete.json").write_text(json.dumps({"name": info.name, "version": info.version}))
            if entry.exists():  # a download that died midway left it without complete.json
                shutil.rmtree(entry)
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verify(self, info: VersionInfo, entry: Path) -> None:
        content = entry / "content" / info.basename
        for file in info.files:
            local = content if info.kind == "file" else content / file.path
            digest = file_sha256(local) if local.is_file() else "missing"
            if digest != file.sha256:
                raise ModelIntegrityError(
                    f"model {info.name!r} version {info.version!r}: the cached file {str(local)!r} has "
                    f"sha256 {digest[:12]}, expected {file.sha256[:12]} (a corrupted cache); delete "
                    f"{str(entry)!r} and it is downloaded again"
                )

    def entries(self) -> list[CacheEntry]:
        """Every complete cached version, with its size, last use and whether a live process pins it."""
        found: list[CacheEntry] = []
        if not self.root.is_dir():
            return found
        for entry in self.root.iterdir():
            marker = entry / "complete.json"
            if entry.name.startswith(".") or not marker.exists():
                continue
            size = sum(path.stat().st_size for path in (entry / "content").rglob("*") if path.is_file())
            found.append(CacheEntry(entry.name, size, marker.stat().st_mtime, self._pinned(entry)))
        return found

    def _pinned(self, entry: Path) -> bool:
        pins = self._pins(entry)
        if not pins.is_dir():
            return False
        return any(_alive(pid) for pin in pins.iterdir() if (pid := _pin_pid(pin.name)) is not None)

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used unpinned versions until the cache fits; returns their sha256."""
        chosen = evictable(self.entries(), self.max_bytes, keep)
        for key in chosen:
            with _locked(self.root / f"{key}.lock"):
                shutil.rmtree(self.root / key, ignore_errors=True)
        return chosen


def _pin_name(pin: str) -> str:
    """The pin's file name: this process's id, then a digest of the pin (any characters)."""
    return f"{os.getpid()}-{hashlib.sha256(pin.encode()).hexdigest()[:16]}"


def _pin_pid(name: str) -> int | None:
    pid = name.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed), across processes of this node."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
