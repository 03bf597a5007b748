"""The package's layer rules, checked on its source: one seam per external system."""

from __future__ import annotations

import ast
from pathlib import Path

import servekit

PACKAGE = Path(servekit.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_ray_backend_package_imports_ray() -> None:
    seam = PACKAGE / "_runtime" / "ray"
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if not path.is_relative_to(seam)
        and any(name == "ray" or name.startswith("ray.") for name in _imported_modules(path))
    ]
    assert offenders == []


def test_runtimes_never_import_the_http_edge() -> None:
    runtime = PACKAGE / "_runtime"
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in runtime.rglob("*.py")
        if any(name.startswith(("servekit._http", "servekit._cli")) for name in _imported_modules(path))
    ]
    assert offenders == []


LAYERS = (
    ("servekit.errors", "servekit._version"),
    ("servekit._spec",),
    ("servekit._models", "servekit._telemetry"),
    ("servekit._replica",),
    ("servekit._runtime",),
    ("servekit._bundle",),
    ("servekit._http",),
    ("servekit._bench",),
    ("servekit._cli",),
)
"""The package's layers, bottom first: each module imports only from its own layer and those below."""


def _layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_imports_only_its_own_layer_and_those_below() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer_of(_module_name(path))
        if own is None:  # servekit/__init__.py and __main__.py sit above every layer
            continue
        for imported in _imported_modules(path):
            layer = _layer_of(imported)
            if layer is not None and layer > own:
                offenders.append(f"{_module_name(path)} imports {imported}")
    assert offenders == []


def test_backends_are_reached_only_through_the_registry() -> None:
    """Nothing imports a backend package but the backend itself (the registry loads it by name)."""
    backends = {"local": PACKAGE / "_runtime" / "local", "ray": PACKAGE / "_runtime" / "ray"}
    offenders = []
    for name, folder in backends.items():
        prefix = f"servekit._runtime.{name}"
        for path in PACKAGE.rglob("*.py"):
            if path.is_relative_to(folder):
                continue
            imported = _imported_modules(path)
            if any(module == prefix or module.startswith(prefix + ".") for module in imported):
                offenders.append(f"{_module_name(path)} imports {prefix}")
    assert offenders == []


def test_the_layer_table_covers_every_module() -> None:
    unplaced = [
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if _layer_of(_module_name(path)) is None and path.name not in ("__init__.py", "__main__.py")
    ]
    assert unplaced == []
