"""Which modules are the user's, and the imports among them (`servekit._runtime.user_modules`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from user_project import UserProject

import servekit
from servekit._runtime.user_modules import (
    dependencies,
    dependents,
    imported_names,
    user_file,
    user_modules,
)


@pytest.fixture
def layered(project: UserProject) -> UserProject:
    """app -> helpers -> shop.words (a package, relative import); app -> stages; stages -> json."""
    project.write("helpers.py", "from shop.words import WORD\n\ndef greet(name): return f'{WORD} {name}'\n")
    project.write("shop/__init__.py", "")
    project.write("shop/words.py", "from . import spelling\nWORD = spelling.fix('hello')\n")
    project.write("shop/spelling.py", "def fix(word): return word\n")
    project.write("stages.py", "import json\n\nclass Preprocess:\n    pass\n")
    project.write("app.py", "import httpx\nimport helpers\nfrom stages import Preprocess\n")
    project.load("app")
    return project


def test_user_modules_are_the_projects_not_the_stdlib_installed_packages_or_servekit(
    layered: UserProject,
) -> None:
    found = user_modules()

    root = layered.root.resolve()
    assert {name for name, path in found.items() if path.is_relative_to(root)} == {
        "app", "helpers", "shop", "shop.words", "shop.spelling", "stages",
    }  # fmt: skip
    assert found["shop.words"] == root / "shop" / "words.py"
    assert not {"json", "httpx", "servekit", "servekit._runtime.user_modules", "pytest"} & set(found)


def test_user_file_refuses_the_stdlib_site_packages_servekit_and_non_python_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine.py"

    assert user_file(str(mine)) == mine.resolve()
    assert user_file(json.__file__) is None
    assert user_file(str(httpx.__file__)) is None
    assert user_file(servekit.__file__ or "") is None
    assert user_file(str(tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "x.py")) is None
    assert user_file(str(tmp_path / "mine.so")) is None


def test_imported_names_reads_every_import_form_also_inside_functions() -> None:
    source = """
import a.b
from . import c
from .d import e
from ..f import *
from g import h as i

def later():
    import j
    importlib.import_module("k.l")
    __import__("m")
"""

    names = imported_names(source, package="pkg.sub")

    assert names == {
        "a", "a.b", "pkg", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "pkg.sub.d.e", "pkg.f", "g", "g.h",
        "j", "k", "k.l", "m",
    }  # fmt: skip


def test_source_that_does_not_parse_imports_nothing() -> None:
    assert imported_names("import a\nx = (", package=None) == set()


def test_a_relative_import_without_a_package_is_skipped() -> None:
    assert imported_names("from . import a\nimport b\n", package="") == {"b"}


def test_dependencies_are_the_user_modules_imported_transitively(layered: UserProject) -> None:
    app, stages, words = (sys.modules[name] for name in ("app", "stages", "shop.words"))

    assert list(dependencies(app)) == ["helpers", "shop", "shop.spelling", "shop.words", "stages"]
    assert dependencies(app)["helpers"] == layered.root.resolve() / "helpers.py"
    assert dependencies(stages) == {}
    assert list(dependencies(words)) == ["shop", "shop.spelling"]


def test_an_import_cycle_ends(project: UserProject) -> None:
    project.write("ping.py", "import pong\n")
    project.write("pong.py", "import ping\n")

    ping = project.load("ping")

    assert list(dependencies(ping)) == ["pong"]


def test_dependents_are_the_changed_modules_and_their_importers_transitively(layered: UserProject) -> None:
    assert dependents({"shop.spelling"}) == {"shop.spelling", "shop.words", "helpers", "app"}
    assert dependents({"stages"}) == {"stages", "app"}
    assert dependents({"app"}) == {"app"}
