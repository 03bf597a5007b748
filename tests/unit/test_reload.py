"""`--reload`'s decisions: what to import again, what rolls, what the log says, what it watches.

The reloader runs here without its watcher thread: each test edits files and calls `reload`
with the changed paths, as the watcher does; the server is a recorder of redeploys.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from user_project import UserProject

from servekit._cli.reload import (
    NodePrint,
    Reloader,
    Rollout,
    describe,
    files_in_error,
    fingerprints,
    modules_to_forget,
    plan_rollout,
    restamped,
    stamps,
)
from servekit._cli.target import load_app
from servekit._spec.deployment import Application
from servekit._spec.graph import build_graph

HELPERS = "WORD = 'hello'\n\ndef greet(name):\n    return f'{WORD} {name}'\n"
STAGES = """
import servekit as sk

@sk.deployment
class Preprocess:
    def __call__(self, text):
        return text.strip()
"""
APP = """
import servekit as sk
from helpers import greet
from stages import Preprocess

@sk.deployment
class Greeter:
    def __init__(self, pre):
        self.pre = pre

    async def __call__(self, name):
        return greet(await self.pre(name))

app = Greeter.bind(Preprocess.bind())
"""


class RecordingServer:
    """Stands in for the server: records each redeployed app, or raises `error`."""

    def __init__(self) -> None:
        self.apps: list[Application] = []
        self.error: Exception | None = None

    def redeploy(self, app: Application) -> None:
        if self.error is not None:
            raise self.error
        self.apps.append(app)


@pytest.fixture
def served(
    project: UserProject, monkeypatch: pytest.MonkeyPatch
) -> tuple[UserProject, Reloader, RecordingServer]:
    """app.py (Greeter, uses helpers.py) and stages.py (Preprocess), loaded as `servekit serve` does."""
    project.write("helpers.py", HELPERS)
    project.write("stages.py", STAGES)
    project.write("app.py", APP)
    monkeypatch.chdir(project.root)
    server = RecordingServer()
    reloader = Reloader("app.py:app", load_app("app.py:app"))
    reloader.start(server, watch=False)
    return project, reloader, server


def prints(code: str, whole: str) -> NodePrint:
    return NodePrint(code=code, whole=whole)


def test_plan_rollout_sorts_deployments_by_what_changed() -> None:
    old = {
        "Pre": prints("a", "a1"),
        "Model": prints("b", "b1"),
        "Opts": prints("c", "c1"),
        "Gone": prints("d", "d1"),
    }
    new = {
        "Pre": prints("a", "a1"),
        "Model": prints("B", "B1"),
        "Opts": prints("c", "c2"),
        "New": prints("e", "e1"),
    }

    assert plan_rollout(old, new) == Rollout(
        code_changed=("Model",),
        options_changed=("Opts",),
        added=("New",),
        removed=("Gone",),
        unchanged=("Pre",),
    )
    assert not plan_rollout(old, old).changes


def test_describe_names_the_changed_files_what_rolls_and_what_does_not(tmp_path: Path) -> None:
    rollout = Rollout(code_changed=("Model", "Pipeline"), unchanged=("Preprocess",))

    line = describe([tmp_path / "helpers.py"], rollout, tmp_path)

    assert (
        line == "servekit: helpers.py changed; rolling Model, Pipeline (code changed); unchanged: Preprocess"
    )


def test_describe_says_when_nothing_rolls_and_shows_files_outside_the_cwd_in_full(tmp_path: Path) -> None:
    elsewhere = tmp_path.parent / "lib.py"
    rollout = Rollout(options_changed=("A",), added=("B",), removed=("C",))

    assert describe([elsewhere], Rollout(unchanged=("A",)), tmp_path) == (
        f"servekit: {elsewhere} changed; nothing to roll; unchanged: A"
    )
    assert describe([tmp_path / "x.py"], rollout, tmp_path) == (
        "servekit: x.py changed; rolling A (options or arguments changed); starting B (new); stopping C (removed)"
    )


def test_modules_to_forget_are_the_changed_ones_and_their_importers(
    served: tuple[UserProject, Reloader, RecordingServer],
) -> None:
    project, _, _ = served
    watched = {
        "helpers": project.root / "helpers.py",
        "stages": project.root / "stages.py",
        "app": project.root / "app.py",
    }
    watched = {name: path.resolve() for name, path in watched.items()}

    assert modules_to_forget({watched["helpers"]}, watched, sys.modules) == {"helpers", "app"}
    assert modules_to_forget({watched["app"]}, watched, sys.modules) == {"app"}
    assert modules_to_forget({project.root / "other.py"}, watched, sys.modules) == set()


def test_fingerprints_follow_the_graph_in_start_order(
    served: tuple[UserProject, Reloader, RecordingServer],
) -> None:
    assert list(fingerprints(load_app("app.py:app"))) == ["Preprocess", "Greeter"]


def test_a_helper_edit_imports_it_and_its_importers_again_and_rolls_only_their_deployments(
    served: tuple[UserProject, Reloader, RecordingServer], capsys: pytest.CaptureFixture[str]
) -> None:
    project, reloader, server = served
    old_preprocess = sys.modules["stages"].Preprocess

    helpers = project.write("helpers.py", HELPERS.replace("'hello'", "'howdy'"))
    reloader.reload([helpers])

    assert len(server.apps) == 1
    nodes = build_graph(server.apps[0]).nodes
    assert nodes["Preprocess"].deployment is old_preprocess  # stages.py was not imported again
    assert sys.modules["helpers"].WORD == "howdy"
    assert capsys.readouterr().err.splitlines() == [
        "servekit: helpers.py changed; rolling Greeter (code changed); unchanged: Preprocess",
        "servekit: redeployed",
    ]


def test_an_edit_that_leaves_the_code_as_it_was_rolls_nothing(
    served: tuple[UserProject, Reloader, RecordingServer], capsys: pytest.CaptureFixture[str]
) -> None:
    project, reloader, server = served

    reloader.reload([project.write("helpers.py", HELPERS)])

    assert server.apps == []
    assert capsys.readouterr().err.splitlines() == [
        "servekit: helpers.py changed; nothing to roll; unchanged: Preprocess, Greeter"
    ]


def test_a_new_import_is_watched_and_a_module_that_failed_to_import_too(
    served: tuple[UserProject, Reloader, RecordingServer], caplog: pytest.LogCaptureFixture
) -> None:
    project, reloader, server = served
    extra = project.write("lib/extra.py", "WORD = (\n")  # does not compile
    project.write("lib/__init__.py", "")
    helpers = project.write(
        "helpers.py", "from lib.extra import WORD\n" + HELPERS.replace("WORD = 'hello'\n", "")
    )

    with caplog.at_level(logging.ERROR, "servekit.cli"):
        reloader.reload([helpers])

    assert server.apps == []
    assert "reload failed after helpers.py changed, still serving the previous version" in caplog.text
    assert extra in reloader.watched  # fixing it reloads, though it is not in sys.modules

    reloader.reload([project.write("lib/extra.py", "WORD = 'hi'\n")])

    assert len(server.apps) == 1
    assert {extra, project.root.resolve() / "lib" / "__init__.py"} <= reloader.watched


def test_after_a_failed_redeploy_the_next_reload_redeploys_even_unchanged_code(
    served: tuple[UserProject, Reloader, RecordingServer], caplog: pytest.LogCaptureFixture
) -> None:
    project, reloader, server = served
    server.error = RuntimeError("constructor failed")
    with caplog.at_level(logging.ERROR, "servekit.cli"):
        reloader.reload([project.write("helpers.py", HELPERS.replace("'hello'", "'howdy'"))])
    assert "constructor failed" in caplog.text
    server.error = None

    reloader.reload([project.write("helpers.py", HELPERS)])  # back to the running code

    assert len(server.apps) == 1  # the runtime may hold part of the failed version: it decides


def test_files_in_error_are_the_user_files_of_the_traceback_and_of_a_syntax_error(
    project: UserProject,
) -> None:
    broken = project.write("broken.py", "x = (\n")
    raising = project.write("raising.py", "import broken\n")
    with pytest.raises(SyntaxError) as syntax:
        project.load("raising")

    assert {broken, raising} <= files_in_error(syntax.value)  # (and this test's own frames)


def test_restamped_lists_the_files_edited_or_removed_since_they_were_stamped(tmp_path: Path) -> None:
    kept, edited, removed = (tmp_path / name for name in ("kept.py", "edited.py", "removed.py"))
    for path in (kept, edited, removed):
        path.write_text("x = 1\n")
    seen = stamps([kept, edited, removed])

    edited.write_text("x = 12\n")
    removed.unlink()

    assert restamped(seen) == sorted([edited, removed])
    assert restamped(stamps([kept, edited, removed])) == []
