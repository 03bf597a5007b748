"""Where bundles live on this machine: a bundle path in, a verified folder out; and the local
bundle store (`~/.servekit/bundles`, or `$SERVEKIT_HOME/bundles`) that `servekit bundles` manages.

An archive is unpacked once into the cache (`~/.servekit/cache/<archive sha256>`), verified
before it is moved there, and verified again each time it is served.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from servekit._bundle.archive import unpack_archive
from servekit._bundle.manifest import MANIFEST_NAME, Manifest, read_manifest, verify
from servekit._version import __version__
from servekit.errors import BundleError


def home() -> Path:
    """servekit's folder on this machine: `$SERVEKIT_HOME`, else `~/.servekit`."""
    return Path(os.environ.get("SERVEKIT_HOME") or Path.home() / ".servekit")


def is_bundle(target: str) -> bool:
    """Whether the CLI target names a bundle (a .tar.gz, or a folder with a manifest)."""
    path = Path(target)
    return target.endswith(".tar.gz") or (path.is_dir() and (path / MANIFEST_NAME).is_file())


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle folder and its manifest."""

    folder: Path
    manifest: Manifest
    sha256: str | None
    """The archive's sha256 (None for a bundle served from a folder)."""


def open_bundle(target: str) -> OpenedBundle:
    """The verified folder of the bundle `target` (unpacked into the cache when an archive).

    Raises `BundleError` naming the file that fails its sha256, or saying the bundle needs a
    newer servekit.
    """
    path = Path(target)
    if not path.exists():
        raise BundleError(f"bundle not found: {target!r}")
    if path.is_dir():
        manifest = verify(path)
        check_servekit_version(manifest, target)
        return OpenedBundle(path.resolve(), manifest, None)
    digest = sha256_of(path)
    folder = home() / "cache" / digest
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".unpack-") as tmp:
            unpacked = Path(tmp) / "bundle"
            unpack_archive(path, unpacked)
            manifest = verify(unpacked)
            check_servekit_version(manifest, target)
            if not folder.exists():
                unpacked.rename(folder)
    manifest = verify(folder)
    check_servekit_version(manifest, target)
    return OpenedBundle(folder, manifest, digest)


def check_servekit_version(manifest: Manifest, target: str) -> None:
    """Refuse a bundle built by a newer servekit than this one."""
    if _version_key(manifest.servekit) > _version_key(__version__):
        raise BundleError(
            f"bundle {target!r} was built with servekit {manifest.servekit}, newer than this "
            f"servekit {__version__}; upgrade: pip install 'servekit>={manifest.servekit}'"
        )


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(char for char in part if char.isdigit())
        parts.append(int(digits) if digits else 0)
        if not part.isdigit():
            break
    return tuple(parts)


# -- the store ---------------------------------------------------------------------------------


def store() -> Path:
    """The local bundle store's folder."""
    return home() / "bundles"


def add(archive: Path) -> Path:
    """Copy the bundle `archive` into the store (once); its path there."""
    stored = store() / archive.name
    stored.parent.mkdir(parents=True, exist_ok=True)
    if not stored.exists() or sha256_of(stored) != sha256_of(archive):
        shutil.copyfile(archive, stored)
    return stored


def stored_bundles() -> list[Path]:
    """The archives in the store, by name."""
    return sorted(store().glob("*.tar.gz")) if store().is_dir() else []


def find(reference: str) -> Path:
    """The stored archive `reference` names: NAME-VERSION, NAME (the newest) or a path."""
    path = Path(reference)
    if path.is_file() or path.is_dir():
        return path
    names = {archive.name.removesuffix(".tar.gz"): archive for archive in stored_bundles()}
    if reference in names:
        return names[reference]
    matches = [archive for name, archive in names.items() if name.startswith(reference + "-")]
    if matches:
        return max(matches, key=lambda archive: archive.stat().st_mtime)
    known = ", ".join(sorted(names)) or "none"
    raise BundleError(f"no bundle {reference!r} in {str(store())!r} (stored: {known})")


def manifest_of(archive: Path) -> Manifest:
    """The manifest of a bundle archive or folder, read without unpacking it all."""
    if archive.is_dir():
        return read_manifest(archive)
    return open_bundle(str(archive)).manifest
