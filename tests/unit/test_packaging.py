"""What `pip install` brings: the fast HTTP stack by default, numpy with torch, and a README
whose first command installs what the example imports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_default_install_has_the_fast_stack_where_it_has_wheels() -> None:
    dependencies = PROJECT["dependencies"]
    assert {"uvloop", "httptools"} <= _names(dependencies)
    uvloop = next(requirement for requirement in dependencies if requirement.startswith("uvloop"))
    assert "sys_platform != 'win32'" in uvloop
    assert "platform_python_implementation == 'CPython'" in uvloop


def test_the_fast_extra_stays_installable_and_adds_nothing() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(extras["fast"]) <= set(PROJECT["dependencies"])


def test_the_torch_extra_brings_numpy() -> None:
    """torch without numpy warns "Failed to initialize NumPy" on import."""
    assert {"torch", "numpy"} <= _names(PROJECT["optional-dependencies"]["torch"])


def test_the_readme_first_command_installs_the_torch_extra() -> None:
    first = re.search(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert first is not None
    command = first.group(1)
    assert "'.[torch]'" in command
    assert "servekit serve examples/classifier/app.py:app" in command
