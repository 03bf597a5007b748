"""`servekit serve --reload`: watch the user's modules, import again what changed, roll what it changed.

In: the target, the server serving it and the app it serves; file changes reported by watchfiles.
Out: a redeploy when a deployment's code (its module or any user module that module imports),
options or arguments changed, and one log line naming the changed files and what rolls:

    servekit: helpers.py changed; rolling Model, Pipeline (code changed); unchanged: Preprocess

A change that fails to import or start is logged and the running version keeps serving.
The pure parts (`fingerprints`, `plan_rollout`, `describe`, `modules_to_forget`) decide; the
`Reloader` watches, imports and redeploys.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import threading
import traceback
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from servekit._cli.target import load_app
from servekit._runtime.fingerprint import code_fingerprint, fingerprint
from servekit._runtime.user_modules import Modules, dependents, user_file, user_modules
from servekit._spec.deployment import Application
from servekit._spec.graph import build_graph

logger = logging.getLogger("servekit.cli")

DEBOUNCE_MS = 200
"""Changes within this long of each other make one reload (an editor's save writes several)."""

RESCAN_MS = 1000
"""With no change reported for this long, the watched files' times and sizes are compared with
those seen at the last import: that catches an edit saved while the app was starting or while
the watcher restarted on other folders."""

LISTED_FILES = 8
"""How many watched files the start-up line names before it counts the rest."""


class Redeployable(Protocol):
    """What the reloader needs of a server: a rolling redeploy of a new version of the app."""

    def redeploy(self, app: Application) -> None:
        """Roll the deployments whose fingerprint changed; raise if the new version fails."""


@dataclass(frozen=True)
class NodePrint:
    """One deployment's fingerprints: of its code alone, and of code, options and arguments."""

    code: str
    whole: str


@dataclass(frozen=True)
class Rollout:
    """What a redeploy from one version of an app to the next does, by deployment name."""

    code_changed: tuple[str, ...] = ()
    options_changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        """Whether any deployment rolls, starts or stops."""
        return bool(self.code_changed or self.options_changed or self.added or self.removed)


def fingerprints(app: Application) -> dict[str, NodePrint]:
    """The fingerprints of every deployment of `app`, by name, in start order."""
    return {
        name: NodePrint(code=code_fingerprint(node.deployment.target), whole=fingerprint(node))
        for name, node in build_graph(app).nodes.items()
    }


def plan_rollout(old: Mapping[str, NodePrint], new: Mapping[str, NodePrint]) -> Rollout:
    """Which deployments roll going from `old` to `new` (the runtime compares the same digests)."""
    kept = [name for name in new if name in old]
    return Rollout(
        code_changed=tuple(name for name in kept if new[name].code != old[name].code),
        options_changed=tuple(
            name for name in kept if new[name].code == old[name].code and new[name].whole != old[name].whole
        ),
        added=tuple(name for name in new if name not in old),
        removed=tuple(name for name in old if name not in new),
        unchanged=tuple(name for name in kept if new[name].whole == old[name].whole),
    )


def describe(changed: Iterable[Path], rollout: Rollout, cwd: Path) -> str:
    """The log line for a reload: which files changed and what each deployment does about it."""
    files = ", ".join(shown(path, cwd) for path in changed) or "code"
    parts = []
    if rollout.code_changed:
        parts.append(f"rolling {', '.join(rollout.code_changed)} (code changed)")
    if rollout.options_changed:
        parts.append(f"rolling {', '.join(rollout.options_changed)} (options or arguments changed)")
    if rollout.added:
        parts.append(f"starting {', '.join(rollout.added)} (new)")
    if rollout.removed:
        parts.append(f"stopping {', '.join(rollout.removed)} (removed)")
    if not rollout.changes:
        parts.append("nothing to roll")
    if rollout.unchanged:
        parts.append(f"unchanged: {', '.join(rollout.unchanged)}")
    return f"servekit: {files} changed; {'; '.join(parts)}"


def modules_to_forget(changed: Collection[Path], watched: Mapping[str, Path], modules: Modules) -> set[str]:
    """The modules to import again after `changed` files changed: theirs and their importers'.

    `watched` maps the user's module names to their files; `modules` is `sys.modules`.
    """
    names = {name for name, path in watched.items() if path in changed}
    return {name for name in dependents(names, modules) if name != "__main__"}


def files_in_error(error: BaseException) -> set[Path]:
    """The user's files an import error points at: its traceback's, and a SyntaxError's file.

    Watching them lets fixing a module that failed to import (and so is not in `sys.modules`)
    trigger the next reload.
    """
    found: set[Path] = set()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = [frame.filename for frame in traceback.extract_tb(current.__traceback__)]
        if isinstance(current, SyntaxError) and current.filename:
            names.append(current.filename)
        found.update(path for path in map(user_file, names) if path is not None)
        current = current.__cause__ or current.__context__
    return found


Stamp = tuple[int, int] | None
"""A file's (modification time in ns, size), or None where it is missing."""


def stamps(files: Iterable[Path]) -> dict[Path, Stamp]:
    """The stamp of each of `files` now."""
    found: dict[Path, Stamp] = {}
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            found[path] = None
        else:
            found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def restamped(seen: Mapping[Path, Stamp]) -> list[Path]:
    """The files of `seen` whose stamp differs now, by path."""
    return sorted(path for path, stamp in stamps(seen).items() if stamp != seen[path])


def shown(path: Path, cwd: Path) -> str:
    """`path` as the log shows it: relative to `cwd` when inside it."""
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


class Reloader:
    """Watches the user's modules and redeploys the app in place when they change.

    The watched files are every user module imported (the target and what it imports,
    transitively), re-read after each reload so new imports join. A change imports again the
    changed modules and every module that imports them, then only deployments whose
    fingerprint changed roll, replica by replica.
    """

    def __init__(self, target: str, app: Application) -> None:
        """Remember what `app` (just loaded from `target`) imported, as it is on disk now.

        Made right after loading, before the app starts, so an edit made while replicas start
        is seen by the first check of the watcher.
        """
        self._target = target
        self._server: Redeployable | None = None
        self._running = fingerprints(app)
        self._modules = user_modules()
        self._files = set(self._modules.values())
        self._stamps = stamps(self._files)
        self._unsure = False  # a redeploy failed: the runtime may hold part of it, so ask it again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="servekit-reload", daemon=True)

    def start(self, server: Redeployable, *, watch: bool = True) -> None:
        """Redeploy to `server` from now on, and (unless not `watch`) watch the files in a thread."""
        self._server = server
        if watch:
            print(f"servekit: reloading on changes to {self._listing()}", file=sys.stderr, flush=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def watched(self) -> frozenset[Path]:
        """The files whose changes reload the app now."""
        return frozenset(self._files)

    def reload(self, changed: Sequence[Path]) -> None:
        """Import the changed modules and their importers afresh, and roll what they changed."""
        for name in modules_to_forget(changed, self._modules, sys.modules):
            sys.modules.pop(name, None)
        for path in changed:  # bytecode stamped with the same second and size would pass for fresh
            with contextlib.suppress(OSError, ValueError):
                Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        importlib.invalidate_caches()
        before = stamps(self._files)
        try:
            app = load_app(self._target)
        except Exception as exc:
            self._set_watched(self._files | files_in_error(exc), before)
            self._failed(changed, exc)
            return
        self._modules = user_modules()
        self._set_watched(set(self._modules.values()), before)
        try:
            new = fingerprints(app)
            rollout = plan_rollout(self._running, new)
            print(describe(changed, rollout, Path.cwd()), file=sys.stderr, flush=True)
            if (rollout.changes or self._unsure) and self._server is not None:
                self._server.redeploy(app)
        except Exception as exc:
            self._unsure = True
            self._failed(changed, exc)
            return
        self._running, self._unsure = new, False
        if rollout.changes:
            print("servekit: redeployed", file=sys.stderr, flush=True)

    def _failed(self, changed: Sequence[Path], exc: Exception) -> None:
        files = ", ".join(shown(path, Path.cwd()) for path in changed)
        logger.error(
            "reload failed after %s changed, still serving the previous version: %s", files, exc, exc_info=exc
        )

    def _set_watched(self, files: set[Path], seen: Mapping[Path, Stamp]) -> None:
        """Watch `files` from now on (a new import joins, a dropped one leaves), saying which join.

        `seen` are the stamps taken before the import; files new to it are stamped now.
        """
        added = sorted(files - self._files)
        self._files = files
        self._stamps = {**stamps(files - seen.keys()), **{path: seen[path] for path in files & seen.keys()}}
        if added:
            listing = ", ".join(shown(path, Path.cwd()) for path in added)
            print(f"servekit: now also watching {listing}", file=sys.stderr, flush=True)

    def _folders(self) -> list[Path]:
        return sorted({path.parent for path in self._files if path.parent.is_dir()})

    def _is_watched(self, _change: object, path: str) -> bool:
        return Path(path) in self._files

    def _listing(self) -> str:
        names = sorted(shown(path, Path.cwd()) for path in self._files)
        if not names:
            return "nothing (the app imports no modules outside installed packages)"
        more = len(names) - LISTED_FILES
        return ", ".join(names[:LISTED_FILES]) + (f" and {more} more" if more > 0 else "")

    def _run(self) -> None:
        import watchfiles  # noqa: PLC0415 (only --reload needs it)

        while not self._stop.is_set():
            folders = self._folders()
            if not folders:
                self._stop.wait()
                return
            for changes in watchfiles.watch(
                *folders,
                watch_filter=self._is_watched,
                stop_event=self._stop,
                debounce=DEBOUNCE_MS,
                recursive=False,
                rust_timeout=RESCAN_MS,
                yield_on_timeout=True,
            ):
                changed = sorted({Path(path) for _, path in changes}.union(restamped(self._stamps)))
                if changed:
                    self.reload(changed)
                if self._folders() != folders:
                    break  # the watched files moved to other folders: watch those instead
