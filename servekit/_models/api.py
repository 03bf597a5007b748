"""`servekit.models`: push, tag, roll back and fetch model versions from Python.

In: model names, tags, versions, local paths and an optional store URL (default
``SERVEKIT_MODEL_STORE`` or ``~/.servekit/models``). Out: manifests, tags and local paths of
verified copies (from this node's cache, ``SERVEKIT_MODEL_CACHE``). The CLI's
``servekit models ...`` calls these.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servekit._models.cache import ModelCache
from servekit._models.store import ModelStore, TagInfo, VersionInfo
from servekit._spec.models import ModelRef
from servekit.errors import ModelStoreError


def parse_target(target: str) -> tuple[str, str | None, str | None]:
    """(name, tag, version) of ``"clf:production"``, ``"clf@v7"`` or ``"clf"`` (its tag latest)."""
    if "@" in target:
        name, version = target.split("@", 1)
        return name, None, version
    if ":" in target:
        name, tag = target.split(":", 1)
        return name, tag, None
    return target, "latest", None


def push(
    name: str,
    path: str | Path,
    *,
    version: str | None = None,
    meta: Mapping[str, str] | None = None,
    store: str | None = None,
) -> VersionInfo:
    """Store the file or folder `path` as a version of model `name`; its tag ``latest`` moves to it.

    Without `version`, the version is the first 12 hex digits of the content's sha256; pushing
    identical content again stores nothing new and returns the existing version.
    """
    return ModelStore(store).push(name, path, version, meta)


def resolve(target: str, *, store: str | None = None) -> VersionInfo:
    """The manifest of ``"name:tag"``, ``"name@version"`` or ``"name"`` (its tag ``latest``)."""
    name, tag, version = parse_target(target)
    return ModelStore(store).resolve(name, tag, version)


def get(target: str, *, store: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local path to ``"name:tag"``, ``"name@version"`` or ``"name"``, downloaded once per node.

    The copy lives in this node's cache and is verified by sha256 on every call;
    `ModelIntegrityError` names the folder to delete when it does not match.
    """
    source = ModelStore(store)
    name, tag, version = parse_target(target)
    info = source.resolve(name, tag, version)
    return ModelCache(None if cache_dir is None else Path(cache_dir)).get(source, info)


def tag(name: str, version: str, tag: str, *, store: str | None = None) -> TagInfo:
    """Point `tag` (like ``"production"``) at `name`@`version`; deployments bound to the tag follow it."""
    return ModelStore(store).tag(name, version, tag)


def untag(name: str, tag: str, *, store: str | None = None) -> None:
    """Remove the tag `name`:`tag`."""
    ModelStore(store).untag(name, tag)


def rollback(name: str, tag: str, *, store: str | None = None) -> TagInfo:
    """Move `name`:`tag` back to the version it pointed to before its last move."""
    return ModelStore(store).rollback(name, tag)


def list_models(*, store: str | None = None) -> list[str]:
    """The names of the models in the store."""
    return ModelStore(store).models()


def show(name: str, *, store: str | None = None) -> dict[str, Any]:
    """Model `name`'s versions (with sizes, digests and metadata) and tags (with their history)."""
    source = ModelStore(store)
    versions = [source.version(name, version) for version in source.versions(name)]
    return {
        "name": name,
        "versions": [
            {
                "version": info.version,
                "sha256": info.sha256,
                "size": info.size,
                "files": len(info.files),
                "meta": info.meta,
                "created_at": info.created_at,
            }
            for info in versions
        ],
        "tags": {
            info.tag: {"version": info.version, "history": [version for version, _ in info.history]}
            for info in source.tags(name)
        },
    }


def rm(name: str, version: str, *, store: str | None = None) -> None:
    """Delete `name`@`version` (refused while a tag points to it); `gc` then frees its blobs."""
    ModelStore(store).remove(name, version)


def gc(*, store: str | None = None) -> tuple[int, int]:
    """Delete blobs no version references and stale partial uploads; returns (files, bytes) freed."""
    return ModelStore(store).gc()


def load_ref(
    ref: ModelRef, cache: ModelCache | None = None, pin: str | None = None
) -> tuple[Path, VersionInfo]:
    """The local path and manifest of the version `ref` names now (its pinned version if set);
    with `pin` (like a replica id), the local copy is kept from eviction until unpinned."""
    source = ModelStore(ref.store)
    version = ref.version or ref.pinned
    info = source.resolve(ref.name, ref.tag, version)
    return (cache or ModelCache()).get(source, info, pin=pin), info


def current_version(ref: ModelRef) -> str:
    """The version `ref`'s tag points to now (or its fixed version)."""
    if ref.version is not None:
        return ref.version
    if ref.tag is None:
        raise ModelStoreError(f"{ref!r} names neither a tag nor a version")
    return ModelStore(ref.store).get_tag(ref.name, ref.tag).version


__all__ = [
    "gc",
    "get",
    "list_models",
    "push",
    "resolve",
    "rm",
    "rollback",
    "show",
    "tag",
    "untag",
]
