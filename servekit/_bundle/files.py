"""Which of a project's files go into a bundle's `src/`: a folder and the user's globs in, sorted
relative paths out.

A file is left out when `.gitignore` (the folder's own and those of its parents up to the
repository root, each applying below its own folder) or `.servekitignore` ignores it, when it
is build debris (`__pycache__`, `.git`, virtual environments), or when `--exclude` matches it.
`--include` brings a file back whatever ignores it, and is the only way in for a file that looks
like a secret (`.env`, private keys) or is larger than the size limit: those raise `BundleError`
naming the file and the fix, rather than leaving the bundle quietly different.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec

from servekit.errors import BundleError

ALWAYS_IGNORED = (
    ".git/",
    ".hg/",
    "__pycache__/",
    "*.py[cod]",
    ".venv/",
    "venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".nox/",
    ".tox/",
    "*.egg-info/",
    ".ipynb_checkpoints/",
    ".DS_Store",
    ".servekit/",
)
"""Never part of an app's code (gitignore syntax)."""

SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    ".netrc",
    ".pypirc",
    ".npmrc",
    "id_dsa*",
    "credentials*.json",
    "service-account*.json",
    "secrets.json",
    "secrets.yaml",
    "secrets.yml",
    "secrets.toml",
    ".htpasswd",
    "*.kdbx",
)
"""File names that look like secrets: refused unless included explicitly (fnmatch on the name)."""

DEFAULT_MAX_FILE_BYTES = 10 * 2**20
"""Files above this size need `--include` (a model file belongs in the bundle on purpose)."""

IGNORE_FILES = (".gitignore", ".servekitignore")


@dataclass(frozen=True)
class Selection:
    """What to take from the project folder: the user's globs and the size limit."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    extra_ignored: Sequence[str] = field(default_factory=tuple)
    """More gitignore patterns (the bundle's output folder when it lies inside the project)."""


def select_files(root: Path, selection: Selection = Selection()) -> list[str]:
    """The files under `root` that belong in the bundle, as sorted POSIX paths relative to it.

    Raises `BundleError` for a secret-looking or oversized file that was not included explicitly.
    """
    root = root.resolve()
    include = pathspec.GitIgnoreSpec.from_lines(selection.include)
    exclude = pathspec.GitIgnoreSpec.from_lines([*selection.exclude, *selection.extra_ignored])
    always = pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED)
    parents = _parent_ignores(root)
    chosen: list[str] = []
    for relative in _walk(root, always, parents, prune=not selection.include):
        if exclude.match_file(relative):
            continue
        explicit = include.match_file(relative)
        if not explicit and _ignored(root, relative, parents):
            continue
        if not explicit:
            _refuse_secret(relative)
            _refuse_oversized(root / relative, relative, selection.max_file_bytes)
        chosen.append(relative)
    return sorted(chosen)


@dataclass(frozen=True)
class _Ignore:
    """A parent folder's ignore patterns; `base` is the path from that folder to the root."""

    base: str
    spec: pathspec.GitIgnoreSpec


def _parent_ignores(root: Path) -> list[_Ignore]:
    """Ignore files of the folders above `root`, up to the repository root, as patterns on paths
    relative to `root`."""
    found: list[_Ignore] = []
    folder = root
    while folder.parent != folder and not (folder / ".git").exists():
        folder = folder.parent
        prefix = root.relative_to(folder).as_posix()
        for name in IGNORE_FILES:
            lines = _read_lines(folder / name)
            if lines:
                spec = pathspec.GitIgnoreSpec.from_lines(lines)
                found.append(_Ignore(prefix, spec))
    return found if (folder / ".git").exists() else []


def _walk(
    root: Path, always: pathspec.GitIgnoreSpec, parents: list[_Ignore], *, prune: bool
) -> Iterable[str]:
    """Every file under `root` but debris; with `prune`, ignored folders are not entered (without it
    their files are judged one by one, as `--include` may bring some back)."""
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        base = "" if base == "." else base
        kept = []
        for name in sorted(dirs):
            relative = f"{base}/{name}" if base else name
            if not always.match_file(relative + "/") and not (
                prune and _ignored(root, relative + "/", parents)
            ):
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            relative = f"{base}/{name}" if base else name
            if not always.match_file(relative) and not (Path(folder) / name).is_symlink():
                yield relative


def _ignored(root: Path, relative: str, parents: list[_Ignore]) -> bool:
    """Whether the ignore files of `relative`'s folders (and the root's parents) ignore it."""
    for ignore in parents:
        if ignore.spec.match_file(f"{ignore.base}/{relative}"):
            return True
    parts = PurePosixPath(relative.rstrip("/")).parts
    for depth in range(len(parts)):
        base = "/".join(parts[:depth])
        below = "/".join(parts[depth:]) + ("/" if relative.endswith("/") else "")
        for name in IGNORE_FILES:
            lines = _read_lines(root / base / name)
            if lines and pathspec.GitIgnoreSpec.from_lines(lines).match_file(below):
                return True
    return False


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []


def looks_secret(relative: str) -> bool:
    """Whether the file's name looks like a secret (`.env`, a private key, credentials)."""
    name = PurePosixPath(relative).name.lower()
    if name in (".env.example", ".env.sample", ".env.template"):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_PATTERNS)


def _refuse_secret(relative: str) -> None:
    if looks_secret(relative):
        raise BundleError(
            f"{relative!r} looks like a secret and is not built into bundles; ignore it in "
            f".servekitignore, or pass --include {relative!r} if it really belongs in the bundle"
        )


def _refuse_oversized(path: Path, relative: str, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise BundleError(
            f"{relative!r} is {_size(size)}, over the {_size(limit)} limit for files "
            f"not included explicitly; pass --include {relative!r} to bundle it, or ignore it in "
            ".servekitignore"
        )


def _size(size: int) -> str:
    if size < 2**10:
        return f"{size} bytes"
    if size < 2**20:
        return f"{size / 2**10:.1f} KiB"
    return f"{size / 2**20:.1f} MiB"
