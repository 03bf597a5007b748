"""Load an app from a target string: `pkg.module:app` or `path/to/file.py:app`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from servekit._spec.deployment import Application, Deployment


class TargetError(Exception):
    """The target cannot be loaded; the message is one line naming what was not found."""


def load_app(target: str) -> Application:
    """Import `target` and return the application it names (a bare deployment is bound)."""
    location, _, attribute = target.partition(":")
    attribute = attribute or "app"
    module = _import(location)
    value: object = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise TargetError(f"{location!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    if isinstance(value, Deployment):
        return value.bind()
    if not isinstance(value, Application):
        raise TargetError(
            f"{target!r} is a {type(value).__name__}, not an app; point at the result of Deployment.bind(...)"
        )
    return value


def _import(location: str) -> ModuleType:
    if location.endswith(".py") or "/" in location:
        return _import_file(Path(location))
    _on_path(Path.cwd())
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        if exc.name and (location == exc.name or location.startswith(f"{exc.name}.")):
            raise TargetError(f"cannot import module {location!r}: no module named {exc.name!r}") from None
        raise TargetError(f"importing {location!r} failed: {exc}") from None
    except ImportError as exc:
        raise TargetError(f"importing {location!r} failed: {exc}") from None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TargetError(f"file not found: {str(path)!r}")
    resolved = path.resolve()
    _on_path(resolved.parent)
    name = resolved.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(resolved):
        return loaded  # imported already; a reload forgets the modules it must import again
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)  # a half-run module must not be found by the next load
        if isinstance(exc, ImportError):
            raise TargetError(f"importing {str(path)!r} failed: {exc}") from None
        raise
    return module


def _on_path(folder: Path) -> None:
    """Put `folder` first on `sys.path` (once), so the target's sibling modules import."""
    entry = str(folder)
    if sys.path[:1] != [entry]:
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
