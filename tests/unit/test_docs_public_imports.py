"""What users copy imports only public servekit: docs/, examples/ and the README never import
a private module (`servekit._...`), whose names may change in any release."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_IMPORT = re.compile(r"^\s*(?:from\s+servekit\._\w*|import\s+servekit\._\w*)", re.MULTILINE)


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    files += [path for path in (ROOT / "examples").rglob("*") if path.suffix in {".py", ".md", ".ipynb"}]
    return sorted(files)


def _code(path: Path) -> str:
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def test_the_scan_sees_the_docs_and_examples() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _sources()}
    assert {"README.md", "docs/autoscaling.md", "examples/hello.py", "examples/quickstart.ipynb"} <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_private_servekit_import(path: Path) -> None:
    assert PRIVATE_IMPORT.findall(_code(path)) == []


def test_the_pattern_catches_both_import_forms() -> None:
    text = "from servekit._replica.autoscaling import MetricsSample\n    import servekit._http.app as a\n"
    assert len(PRIVATE_IMPORT.findall(text)) == 2
    assert PRIVATE_IMPORT.findall("import servekit as sk\nfrom servekit.errors import NotFoundError\n") == []
