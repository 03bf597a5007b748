"""What a bundle's lock is resolved from: the declared requirements, else the modules' imports."""

from __future__ import annotations

from pathlib import Path

from servekit._bundle.requirements import declared, imported, locked_versions


def test_declared_requirements_come_from_requirements_txt_then_pyproject(tmp_path: Path) -> None:
    assert declared(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy>=1"]\n')
    found = declared(tmp_path)
    assert found is not None
    assert found.lines == ("numpy>=1",)
    assert found.source == "declared in pyproject.toml"
    (tmp_path / "requirements.txt").write_text("# pinned\nhttpx>=0.27  # client\n\n")
    found = declared(tmp_path)
    assert found is not None
    assert found.lines == ("httpx>=0.27",)
    assert found.source == "declared in requirements.txt"


def test_without_a_declaration_the_imported_distributions_are_pinned(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import os\nimport yaml\nimport helper\nfrom pydantic import BaseModel\n"
    )
    found = imported([tmp_path / "app.py"], local_names={"helper"})
    names = {line.split("==")[0].lower() for line in found.lines}
    assert names == {"pyyaml", "pydantic"}
    assert found.source == "inferred from the modules' imports"


def test_locked_versions_reads_each_pin() -> None:
    lock = "anyio==4.1.0 \\\n    --hash=sha256:ab\n    # via starlette\nStarlette==0.40.0 ; python_version >= '3.8' \\\n"
    assert locked_versions(lock) == {"anyio": "4.1.0", "starlette": "0.40.0"}
