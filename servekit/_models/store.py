"""`ModelStore`: versioned, content-addressed model artifacts on any fsspec filesystem.

In: a store URL (a local folder, ``file://``, ``s3://``, ``gs://``, ``memory://``...) and model
files or folders. Out: versions (`VersionInfo`), tags with a history, blobs fetched and verified.

Layout under the store's root (a bundle's ``models/`` holds the same, less ``tmp/``)::

    blobs/sha256/<hex>                   file contents, one copy per distinct content
    models/<name>/versions/<version>.json  a version's manifest: its files' paths, sizes, sha256
    models/<name>/tags/<tag>.json        the version a tag points to, and the tag's history
    tmp/<random>                         uploads in flight (renamed into place when complete)

Every write goes to ``tmp/`` first and is renamed into place, and a version's manifest is
written only after all its blobs: a push that dies midway leaves no visible version, only
temporary files that `gc` removes. Concurrent pushes of the same content write the same
blobs under the same names, so they are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from servekit._spec.models import NAME
from servekit.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStoreError,
    ModelStoreUnavailableError,
)

CHUNK = 1 << 20
STALE_TMP_S = 3600.0
"""Temporary uploads older than this are debris of a failed push, which `gc` removes."""


def default_store_url() -> str:
    """``SERVEKIT_MODEL_STORE``, else ``~/.servekit/models``."""
    return os.environ.get("SERVEKIT_MODEL_STORE") or str(Path.home() / ".servekit" / "models")


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path inside the version, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionInfo:
    """A stored version's manifest."""

    name: str
    version: str
    sha256: str
    """Digest of the version's content (its files' paths and digests): equal content, equal digest."""
    kind: str
    """``"file"`` or ``"dir"``: what was pushed."""
    basename: str
    """The pushed file's or folder's name, kept for the local copy."""
    files: tuple[FileEntry, ...]
    meta: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def size(self) -> int:
        """Total bytes of the version's files."""
        return sum(entry.size for entry in self.files)

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON-ready data."""
        data = asdict(self)
        data["files"] = [asdict(entry) for entry in self.files]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionInfo:
        """Read a manifest written by `to_json`."""
        files = tuple(FileEntry(**entry) for entry in data["files"])
        return cls(**{**data, "files": files})


@dataclass(frozen=True)
class TagInfo:
    """Where a tag points, and the versions it pointed to before (oldest first, current last)."""

    name: str
    tag: str
    version: str
    history: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        """The tag file's content as JSON-ready data."""
        return {"name": self.name, "tag": self.tag, "version": self.version, "history": self.history}


def json_bytes(data: Any) -> bytes:
    """A store's JSON file (a version's manifest, a tag) as bytes: sorted keys, one-space indents."""
    return json.dumps(data, indent=1, sort_keys=True).encode()


def content_digest(kind: str, files: tuple[FileEntry, ...]) -> str:
    """The sha256 naming a version's content: its kind and each file's path and digest."""
    canonical = json.dumps([kind, [(entry.path, entry.sha256) for entry in files]], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a local file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_files(path: Path) -> tuple[str, list[tuple[str, Path]]]:
    """What pushing `path` stores: its kind and (relative path, file) pairs, sorted."""
    if path.is_file():
        return "file", [(path.name, path)]
    if path.is_dir():
        found = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        return "dir", found
    raise ModelStoreError(f"cannot push {str(path)!r}: no such file or folder; give a model file or folder")


def check_name(what: str, value: str) -> str:
    """`value` if it is a valid model name, version or tag; else a `ModelStoreError` naming it."""
    if not NAME.match(value):
        raise ModelStoreError(
            f"bad {what} {value!r}: use letters, digits, '.', '_' and '-' (up to 128), like 'clf-v7'"
        )
    return value


class ModelStore:
    """A model store at an fsspec URL (default: ``SERVEKIT_MODEL_STORE`` or ``~/.servekit/models``)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_store_url()
        try:
            import fsspec  # noqa: PLC0415  # only apps that use a model store pay for its import

            self.fs, root = fsspec.core.url_to_fs(os.path.expanduser(self.url))
        except (ImportError, ValueError) as exc:
            raise ModelStoreUnavailableError(
                f"model store {self.url!r} cannot be opened: {exc}; give a folder or an fsspec URL "
                "(install the filesystem's package, like s3fs for s3://)"
            ) from exc
        self.root = root.rstrip("/")

    # -- paths ---------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _blob(self, sha256: str) -> str:
        return self._path("blobs", "sha256", sha256)

    def _version_path(self, name: str, version: str) -> str:
        return self._path("models", name, "versions", f"{version}.json")

    def _tag_path(self, name: str, tag: str) -> str:
        return self._path("models", name, "tags", f"{tag}.json")

    # -- low-level I/O -------------------------------------------------------------------------
    def _unavailable(self, exc: Exception, doing: str) -> ModelStoreUnavailableError:
        return ModelStoreUnavailableError(
            f"model store {self.url!r} cannot be reached while {doing}: {type(exc).__name__}: {exc}; "
            "check the URL, credentials and network (or set SERVEKIT_MODEL_STORE)"
        )

    def _tmp(self) -> str:
        self.fs.makedirs(self._path("tmp"), exist_ok=True)
        return self._path("tmp", uuid.uuid4().hex)

    def _publish(self, tmp: str, final: str) -> None:
        """Rename a complete temporary file into place (atomic on local disks)."""
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, final)

    def _write_json(self, final: str, data: Any) -> None:
        tmp = self._tmp()
        self.fs.pipe_file(tmp, json_bytes(data))
        self._publish(tmp, final)

    def _read_json(self, path: str) -> Any | None:
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _upload(self, source: Path, sha256: str) -> None:
        blob = self._blob(sha256)
        if self.fs.exists(blob):
            return
        tmp = self._tmp()
        with source.open("rb") as stream, self.fs.open(tmp, "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
        self._publish(tmp, blob)

    # -- versions ------------------------------------------------------------------------------
    def push(
        self, name: str, path: str | Path, version: str | None = None, meta: Mapping[str, str] | None = None
    ) -> VersionInfo:
        """Store a file or folder as a version of model `name`, and point its tag ``latest`` at it.

        Without `version`, the version is the content digest's first 12 hex digits. Pushing
        identical content again returns the existing version; a `version` that exists with
        other content is an error.
        """
        check_name("model name", name)
        source = Path(path)
        kind, found = local_files(source)
        files = tuple(FileEntry(rel, file.stat().st_size, file_sha256(file)) for rel, file in found)
        digest = content_digest(kind, files)
        version = check_name("version", version or digest[:12])
        try:
            existing = self._read_version(name, version)
            if existing is not None:
                if existing.sha256 != digest:
                    raise ModelStoreError(
                        f"model {name!r} already has a version {version!r} with other content; "
                        "push with another --version"
                    )
                return existing
            for entry, (_, file) in zip(files, found, strict=True):
                self._upload(file, entry.sha256)
            info = VersionInfo(name, version, digest, kind, source.name, files, dict(meta or {}), time.time())
            self._write_json(self._version_path(name, version), info.to_json())
        except (OSError, TimeoutError) as exc:
            raise self._unavailable(exc, f"pushing {name}@{version}") from exc
        self.tag(name, version, "latest")
        return info

    def _read_version(self, name: str, version: str) -> VersionInfo | None:
        data = self._read_json(self._version_path(name, version))
        return None if data is None else VersionInfo.from_json(data)

    def version(self, name: str, version: str) -> VersionInfo:
        """The manifest of `name`@`version`; `ModelNotFoundError` names what exists when it does not."""
        info: VersionInfo | None = self._guarded(
            lambda: self._read_version(name, version), f"reading {name}@{version}"
        )
        if info is None:
            known = self.versions(name)
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} (versions: {', '.join(known) or 'none'}); "
                f"push it with `servekit models push {name} PATH --version {version}`"
            )
        return info

    def versions(self, name: str) -> list[str]:
        """The versions of model `name`, oldest first; `ModelNotFoundError` when the model is unknown."""
        folder = self._path("models", name, "versions")
        entries = self._guarded(lambda: self._listdir(folder), f"listing model {name!r}")
        if not entries and not self._guarded(lambda: self.fs.exists(self._path("models", name)), "listing"):
            raise ModelNotFoundError(
                f"model {name!r} is not in the store {self.url!r} "
                f"(models: {', '.join(self.models()) or 'none'}); "
                f"push it with `servekit models push {name} PATH`"
            )
        infos = [self._read_version(name, entry.removesuffix(".json")) for entry in entries]
        return [info.version for info in sorted(filter(None, infos), key=lambda info: info.created_at)]

    def models(self) -> list[str]:
        """The names of the stored models, sorted."""
        return sorted(self._guarded(lambda: self._listdir(self._path("models")), "listing models"))

    def _listdir(self, folder: str) -> list[str]:
        try:
            return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return []

    def _guarded(self, action: Any, doing: str) -> Any:
        try:
            return action()
        except ModelStoreError:
            raise
        except (OSError, TimeoutError) as exc:
            raise self._unavailable(exc, doing) from exc

    def check_reachable(self) -> None:
        """Raise `ModelStoreUnavailableError` unless the store can be listed."""
        self.models()

    def remove(self, name: str, version: str) -> None:
        """Delete version `name`@`version` (its blobs stay until `gc`); refused while a tag points to it."""
        self.version(name, version)
        holding = [tag.tag for tag in self.tags(name) if tag.version == version]
        if holding:
            raise ModelStoreError(
                f"model {name!r} version {version!r} is tagged {', '.join(holding)}; "
                f"move or remove the tag first (`servekit models untag {name} {holding[0]}`)"
            )
        self._guarded(lambda: self.fs.rm(self._version_path(name, version)), f"removing {name}@{version}")

    # -- tags ----------------------------------------------------------------------------------
    def tag(self, name: str, version: str, tag: str) -> TagInfo:
        """Point `tag` at `name`@`version` (which must exist), recording the move in the tag's history."""
        check_name("tag", tag)
        self.version(name, version)
        current = self._read_tag(name, tag)
        history = () if current is None else current.history
        if current is not None and current.version == version:
            return current
        info = TagInfo(name, tag, version, (*history, (version, time.time())))
        self._write_tag(info)
        return info

    def _write_tag(self, info: TagInfo) -> None:
        data = info.to_json()
        self._guarded(lambda: self._write_json(self._tag_path(info.name, info.tag), data), "writing a tag")

    def _read_tag(self, name: str, tag: str) -> TagInfo | None:
        data = self._guarded(lambda: self._read_json(self._tag_path(name, tag)), f"reading {name}:{tag}")
        if data is None:
            return None
        history = tuple((str(version), float(at)) for version, at in data["history"])
        return TagInfo(name, tag, str(data["version"]), history)

    def get_tag(self, name: str, tag: str) -> TagInfo:
        """Where `name`:`tag` points; `ModelNotFoundError` names the existing tags when it does not exist."""
        info = self._read_tag(name, tag)
        if info is None:
            known = [t.tag for t in self.tags(name)]
            raise ModelNotFoundError(
                f"model {name!r} has no tag {tag!r} (tags: {', '.join(known) or 'none'}); "
                f"set it with `servekit models tag {name} VERSION {tag}`"
            )
        return info

    def tags(self, name: str) -> list[TagInfo]:
        """Every tag of model `name`; `ModelNotFoundError` when the model is unknown."""
        self.versions(name)
        entries = self._guarded(lambda: self._listdir(self._path("models", name, "tags")), "listing tags")
        found = [self._read_tag(name, entry.removesuffix(".json")) for entry in entries]
        return [info for info in found if info is not None]

    def untag(self, name: str, tag: str) -> None:
        """Remove `name`:`tag`."""
        self.get_tag(name, tag)
        self._guarded(lambda: self.fs.rm(self._tag_path(name, tag)), f"removing {name}:{tag}")

    def rollback(self, name: str, tag: str) -> TagInfo:
        """Move `name`:`tag` back to the version it pointed to before its last move."""
        current = self.get_tag(name, tag)
        if len(current.history) < 2:
            raise ModelStoreError(
                f"model {name!r} tag {tag!r} has no earlier version to roll back to (it points to "
                f"{current.version!r}); move it with `servekit models tag {name} VERSION {tag}`"
            )
        history = current.history[:-1]
        info = TagInfo(name, tag, history[-1][0], history)
        self._write_tag(info)
        return info

    def resolve(self, name: str, tag: str | None = None, version: str | None = None) -> VersionInfo:
        """The version `name`@`version`, or the one `name`:`tag` points to."""
        if version is None:
            version = self.get_tag(name, tag or "latest").version
        return self.version(name, version)

    # -- content -------------------------------------------------------------------------------
    def fetch(self, info: VersionInfo, folder: Path) -> Path:
        """Download `info`'s files into `folder` (under its pushed name), verifying each sha256."""
        target = folder / info.basename
        for entry in info.files:
            self.fetch_file(info, entry, target if info.kind == "file" else target / entry.path)
        return target

    def fetch_file(self, info: VersionInfo, entry: FileEntry, local: Path) -> None:
        """Download one file of `info` to `local`, verifying its sha256."""
        local.parent.mkdir(parents=True, exist_ok=True)
        digest = self._guarded(lambda: self._download(entry.sha256, local), "downloading")
        if digest != entry.sha256:
            raise ModelIntegrityError(
                f"model {info.name!r} version {info.version!r}: file {entry.path!r} in the store has "
                f"sha256 {digest[:12]}..., expected {entry.sha256[:12]}...; the store is corrupted: "
                f"push it again (`servekit models push {info.name} PATH --version {info.version}`)"
            )

    def _download(self, sha256: str, local: Path) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._blob(sha256), "rb") as stream, local.open("wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def gc(self) -> tuple[int, int]:
        """Delete blobs no version references, and stale temporary uploads; returns (files, bytes) freed."""
        return self._guarded(self._collect, "collecting garbage")  # type: ignore[no-any-return]

    def _collect(self) -> tuple[int, int]:
        referenced = {entry.sha256 for info in self._all_versions() for entry in info.files}
        removed, freed = 0, 0
        for detail in self._ls_detail(self._path("blobs", "sha256")):
            if detail["name"].rstrip("/").rsplit("/", 1)[-1] not in referenced:
                self.fs.rm(detail["name"])
                removed, freed = removed + 1, freed + int(detail.get("size") or 0)
        now = time.time()
        for detail in self._ls_detail(self._path("tmp")):
            modified = _modified(self.fs, detail)
            if modified is None or now - modified > STALE_TMP_S:
                self.fs.rm(detail["name"])
                removed, freed = removed + 1, freed + int(detail.get("size") or 0)
        return removed, freed

    def _all_versions(self) -> Iterator[VersionInfo]:
        for name in self.models():
            for entry in self._listdir(self._path("models", name, "versions")):
                info = self._read_version(name, entry.removesuffix(".json"))
                if info is not None:
                    yield info

    def _ls_detail(self, folder: str) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(folder, detail=True))
        except FileNotFoundError:
            return []


def _modified(fs: Any, detail: Mapping[str, Any]) -> float | None:
    for key in ("mtime", "created", "LastModified"):
        value = detail.get(key)
        if isinstance(value, int | float):
            return float(value)
        if value is not None and hasattr(value, "timestamp"):
            return float(value.timestamp())
    try:
        return float(fs.modified(detail["name"]).timestamp())
    except (NotImplementedError, OSError, AttributeError):
        return None
