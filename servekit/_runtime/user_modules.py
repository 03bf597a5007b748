"""Which imported modules are the user's code, and which of them each one imports.

In: a mapping of module names to modules (`sys.modules` unless given) and the modules' source
files. Out: the user's modules with their source files (not the standard library, not installed
packages, not servekit), the user modules a module imports (transitively, read from its import
statements), and the user modules that import any of a set (transitively): those a reload must
import again. Nothing here imports or reloads anything; only the library folders, fixed for
the process, are kept after the first call.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from types import ModuleType

Modules = Mapping[str, ModuleType]

SERVEKIT_ROOT = Path(__file__).resolve().parents[1]
"""The servekit package folder: its modules are never the user's."""

INSTALLED_PACKAGE_FOLDERS = frozenset({"site-packages", "dist-packages"})
"""A file inside a folder of one of these names belongs to an installed package."""


@functools.cache
def library_roots() -> tuple[str, ...]:
    """Folders whose modules are not the user's (Python's prefixes and library paths, servekit),
    each as an absolute path ending in a separator, as given and resolved (fixed per process)."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(SERVEKIT_ROOT)}
    found.update(sysconfig.get_paths().get(key, "") for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    if hasattr(site, "getsitepackages"):
        found.update(site.getsitepackages())
    found.add(site.getusersitepackages())
    roots = {os.path.abspath(path) for path in found if path}
    roots |= {os.path.realpath(root) for root in roots}
    return tuple(sorted(os.path.join(root, "") for root in roots))


def source_file(module: ModuleType) -> Path | None:
    """`module`'s `.py` file, resolved, if the module is the user's code; else None."""
    file = getattr(module, "__file__", None)
    return user_file(file) if isinstance(file, str) else None


def user_file(file: str) -> Path | None:
    """`file`, resolved, if it is a `.py` file of the user's (outside `library_roots()` and
    outside any site-packages folder); else None."""
    if not file.endswith(".py"):
        return None
    library = library_roots()
    path = os.path.abspath(file)
    if _is_library(path, library):
        return None
    resolved = os.path.realpath(path)
    if resolved != path and _is_library(resolved, library):
        return None
    return Path(resolved)


def user_modules(modules: Modules | None = None) -> dict[str, Path]:
    """The user's modules among `modules` (default `sys.modules`): name -> source file, by name."""
    loaded = sys.modules if modules is None else modules
    found: dict[str, Path] = {}
    for name, module in list(loaded.items()):
        if name == "__main__" or not isinstance(module, ModuleType):
            continue
        path = source_file(module)
        if path is not None:
            found[name] = path
    return dict(sorted(found.items()))


def imported_names(source: str, package: str | None) -> set[str]:
    """Every module `source` imports, also inside functions: `import a.b` names `a` and `a.b`.

    `from a import b` names `a` and `a.b` (b may be a submodule); relative imports are resolved
    against `package`; `importlib.import_module("x")` with a literal name counts too. Source
    that does not parse imports nothing.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        for imported in _imports_in(node, package):
            names.update(_with_parents(imported))
    return names


def imports_of(module: ModuleType, modules: Modules | None = None) -> dict[str, Path]:
    """The user modules that `module` itself imports (not transitively): name -> source file."""
    loaded = sys.modules if modules is None else modules
    source = _read(module)
    if source is None:
        return {}
    found: dict[str, Path] = {}
    for name in imported_names(source, _package_of(module)):
        imported = loaded.get(name)
        if imported is None or imported is module or name == "__main__":
            continue
        path = source_file(imported)
        if path is not None:
            found[name] = path
    return found


def dependencies(module: ModuleType, modules: Modules | None = None) -> dict[str, Path]:
    """Every user module `module` imports, transitively (not `module` itself): name -> file, by name."""
    loaded = sys.modules if modules is None else modules
    found: dict[str, Path] = {}
    pending = [module]
    while pending:
        for name, path in imports_of(pending.pop(), loaded).items():
            if name not in found and name != module.__name__:
                found[name] = path
                pending.append(loaded[name])
    return dict(sorted(found.items()))


def dependents(changed: Collection[str], modules: Modules | None = None) -> set[str]:
    """The user modules in `changed` and every user module that imports one of them, transitively."""
    loaded = sys.modules if modules is None else modules
    importers: dict[str, set[str]] = {}
    for name in user_modules(loaded):
        for imported in imports_of(loaded[name], loaded):
            importers.setdefault(imported, set()).add(name)
    found = set(changed)
    pending = list(changed)
    while pending:
        for importer in importers.get(pending.pop(), ()):
            if importer not in found:
                found.add(importer)
                pending.append(importer)
    return found


def read_source(path: Path) -> str | None:
    """The text of the Python file at `path` as it is on disk now, or None if it cannot be read."""
    try:
        return importlib.util.decode_source(path.read_bytes())
    except (OSError, UnicodeDecodeError, SyntaxError):
        return None


def _is_library(path: str, roots: tuple[str, ...]) -> bool:
    if path.startswith(roots):
        return True
    return not INSTALLED_PACKAGE_FOLDERS.isdisjoint(path.split(os.sep))


def _imports_in(node: ast.AST, package: str | None) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = _resolve("." * node.level + (node.module or ""), package)
        if base is not None:
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    elif isinstance(node, ast.Call) and _is_import_module_call(node):
        argument = node.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            name = _resolve(argument.value, package)
            if name is not None:
                yield name


def _is_import_module_call(node: ast.Call) -> bool:
    function = node.func
    called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    return called in ("import_module", "__import__") and bool(node.args)


def _resolve(name: str, package: str | None) -> str | None:
    if not name.startswith("."):
        return name or None
    try:
        return importlib.util.resolve_name(name, package)
    except (ImportError, ValueError):
        return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: index + 1]) for index in range(len(parts))]


def _package_of(module: ModuleType) -> str | None:
    package = getattr(module, "__package__", None)
    if isinstance(package, str):
        return package
    spec = getattr(module, "__spec__", None)
    return getattr(spec, "parent", None)


def _read(module: ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    return read_source(Path(file))
