"""A bundle's manifest, `servekit.json`: what the bundle holds and how to serve it; and the check
that a bundle folder holds exactly the files its manifest lists, with the same sha256.

Pure data and hashing: a folder in, a `Manifest` or a `BundleError` naming the bad file out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servekit.errors import BundleError

MANIFEST_NAME = "servekit.json"
FORMAT = 2
"""The manifest format this servekit writes and reads (a newer one is refused). 2 added `models`."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    """One file of the bundle."""

    path: str = Field(description="POSIX path inside the bundle, like 'src/app.py'")
    sha256: str = Field(description="hex sha256 of the file's bytes")
    size: int = Field(description="bytes")


class DeploymentEntry(_Model):
    """One deployment of the app graph, as built."""

    target: str = Field(description="the class or function, as 'module:qualname'")
    dependencies: list[str] = Field(description="deployments bound into this one's arguments")
    options: dict[str, Any] = Field(description="the deployment's validated options (JSON)")


class ModelEntry(_Model):
    """One model reference of the graph, pinned to the version the bundle carries in `models/`."""

    name: str = Field(description="the model's name in the store")
    version: str = Field(description="the version bundled (what the tag pointed to at build time)")
    tag: str | None = Field(description="the tag the version was resolved from; null for one by version")
    sha256: str = Field(description="the version's content digest (its files' paths and sha256)")
    size: int = Field(description="bytes of the version's files")


class GitSource(_Model):
    """Where the code came from, when it lies in a git checkout."""

    commit: str
    dirty: bool = Field(description="whether the checkout had uncommitted changes to tracked files")


class Manifest(_Model):
    """`servekit.json`: what a bundle holds and how to serve it."""

    format: int = Field(FORMAT, description="manifest format version")
    name: str
    version: str
    entrypoint: str = Field(description="the app inside src/, like 'app.py:app' or 'pkg.module:app'")
    ingress: str
    deployments: dict[str, DeploymentEntry]
    routes: list[list[str]] = Field(description="[methods, path] of each HTTP route of the ingress")
    python: str = Field(description="the Python version it was built with, like '3.11'")
    servekit: str = Field(description="the servekit version it was built with")
    requirements_source: str = Field(description="what the lock was resolved from")
    dependencies: dict[str, str] = Field(description="every locked distribution and its version")
    git: GitSource | None = None
    include: list[str] = Field(default_factory=list, description="the --include globs it was built with")
    exclude: list[str] = Field(default_factory=list, description="the --exclude globs it was built with")
    models: list[ModelEntry] = Field(
        default_factory=list, description="the model references the graph binds, sorted by name and tag"
    )
    files: list[FileEntry] = Field(description="every file but servekit.json, sorted by path")

    def to_json(self) -> bytes:
        """The manifest's bytes: sorted keys, two-space indents, a final newline (stable)."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path, paths: list[str]) -> list[FileEntry]:
    """A `FileEntry` for each of `paths` under `folder`, sorted by path."""
    return [
        FileEntry(path=path, sha256=sha256_file(folder / path), size=(folder / path).stat().st_size)
        for path in sorted(paths)
    ]


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the bundle unpacked at `folder`; `BundleError` when it is missing or invalid."""
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{str(folder)!r} is not a bundle: it has no {MANIFEST_NAME}") from None
    except ValueError as exc:
        raise BundleError(f"{str(path)!r} is not valid JSON ({exc}); rebuild the bundle") from None
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] > FORMAT:
        raise BundleError(
            f"{str(path)!r} has manifest format {data['format']}, newer than this servekit reads "
            f"({FORMAT}); it was built by servekit {data.get('servekit', '?')}: upgrade servekit "
            "(pip install -U servekit)"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BundleError(f"{str(path)!r} is not a valid manifest: {where}: {first['msg']}") from None


def verify(folder: Path) -> Manifest:
    """The manifest of the bundle at `folder`, once every file matches its sha256 and no file was
    added (but Python's bytecode caches); otherwise `BundleError` naming the first file that differs."""
    manifest = read_manifest(folder)
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            raise BundleError(
                f"bundle file {entry.path!r} is missing from {str(folder)!r}; rebuild the bundle"
            )
        if sha256_file(path) != entry.sha256:
            raise BundleError(
                f"bundle file {entry.path!r} does not match its sha256 in {MANIFEST_NAME}: the bundle "
                "was modified after it was built; rebuild it or fetch it again"
            )
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST_NAME and relative not in listed and not _debris(relative):
            raise BundleError(
                f"bundle file {relative!r} is not listed in {MANIFEST_NAME}: the bundle was modified "
                "after it was built; rebuild it or fetch it again"
            )
    return manifest


def _debris(relative: str) -> bool:
    """Files that serving a bundle writes next to its code: Python's bytecode caches."""
    return "__pycache__/" in relative or relative.endswith((".pyc", ".pyo"))
