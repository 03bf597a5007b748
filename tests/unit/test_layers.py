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
