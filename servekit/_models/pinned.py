"""Pinned stores: the model versions an app references, copied out of their stores into a folder
that is a model store of its own (a bundle's ``models/``).

In: model references (`ModelRef`) and the stores they name. Out: `PinnedModel`s (each
reference with the version it names now: a tag resolves to where it points) and a folder
with the store's layout (``blobs/sha256/``, ``models/<name>/versions/``,
``models/<name>/tags/``) holding just those versions, every file verified by sha256 on the
way. The folder's metadata is fixed, so the same versions give the same bytes whichever store
they came from and whenever they were pushed: every time (``created_at``, tag history) is 0,
and a tag's history is only the version it was pinned to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from servekit._models.store import ModelStore, TagInfo, VersionInfo, json_bytes
from servekit._spec.models import ModelRef
from servekit.errors import ModelStoreError


@dataclass(frozen=True)
class PinnedModel:
    """A model reference, the store it names, and the version it resolved to."""

    ref: ModelRef
    store: ModelStore
    info: VersionInfo


def pin_ref(ref: ModelRef) -> PinnedModel:
    """The reference with the version it names now; `ModelStoreError` (naming the model, the tag
    or version, and the fix) when it does not resolve."""
    store = ModelStore(ref.store)
    return PinnedModel(ref, store, store.resolve(ref.name, ref.tag, ref.version))


def write_pinned_store(pinned: Sequence[PinnedModel], folder: Path) -> list[str]:
    """Copy the pinned versions, and the tags they were resolved from, into `folder` as a store;
    returns the files written (relative to `folder`, sorted).

    `ModelStoreError` when two references cannot share one store: one version name with two
    contents, or one tag pointing to two versions (references to two stores).
    """
    versions = _distinct_versions(pinned)
    tags = _tags(pinned)
    written: dict[str, bytes | None] = {}
    for item in versions:
        info = dataclasses.replace(item.info, created_at=0.0)
        written[f"models/{info.name}/versions/{info.version}.json"] = json_bytes(info.to_json())
        for entry in info.files:
            blob = f"blobs/sha256/{entry.sha256}"
            if blob not in written:
                item.store.fetch_file(info, entry, folder / blob)
                written[blob] = None
    for (name, tag), version in tags.items():
        pinned_tag = TagInfo(name, tag, version, ((version, 0.0),))
        written[f"models/{name}/tags/{tag}.json"] = json_bytes(pinned_tag.to_json())
    for path, content in written.items():
        if content is not None:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(content)
    return sorted(written)


def _distinct_versions(pinned: Sequence[PinnedModel]) -> list[PinnedModel]:
    """One `PinnedModel` per (model, version); the same version name with other content is an error."""
    found: dict[tuple[str, str], PinnedModel] = {}
    for item in pinned:
        key = (item.info.name, item.info.version)
        seen = found.setdefault(key, item)
        if seen.info.sha256 != item.info.sha256:
            raise ModelStoreError(
                f"model {key[0]!r} version {key[1]!r} has other content in {seen.store.url!r} than in "
                f"{item.store.url!r}; a bundle holds one version of that name: bind one of them by "
                "another version"
            )
    return [found[key] for key in sorted(found)]


def _tags(pinned: Sequence[PinnedModel]) -> dict[tuple[str, str], str]:
    """The version each referenced tag resolved to; one tag resolving to two versions is an error."""
    tags: dict[tuple[str, str], str] = {}
    for item in pinned:
        if item.ref.tag is None or item.ref.version is not None:
            continue
        key = (item.info.name, item.ref.tag)
        seen = tags.setdefault(key, item.info.version)
        if seen != item.info.version:
            raise ModelStoreError(
                f"model {key[0]!r} tag {key[1]!r} points to {seen!r} in one store and to "
                f"{item.info.version!r} in another; a bundle pins a tag to one version: bind one of "
                "them by version (servekit.model(name, version=...))"
            )
    return dict(sorted(tags.items()))
