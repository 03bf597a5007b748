"""A deployment's fingerprint covers its module and every user module that module imports."""

from __future__ import annotations

import sys

import pytest
from user_project import UserProject

from servekit._runtime.fingerprint import code_fingerprint, fingerprint
from servekit._runtime.ray.options import code_version
from servekit._spec.graph import DeploymentNode, build_graph

HELPERS = """
from words import WORD

def greet(name):
    return f"{WORD} {name}"
"""


@pytest.fixture
def split_app(project: UserProject) -> UserProject:
    """`Model` (model.py) uses helpers.py, which imports words.py; `Preprocess` (stages.py) uses neither."""
    project.write("words.py", "WORD = 'hello'\n")
    project.write("helpers.py", HELPERS)
    project.write(
        "model.py",
        """
        import servekit as sk
        from helpers import greet

        @sk.deployment
        class Model:
            def __call__(self, name):
                return greet(name)
        """,
    )
    project.write(
        "stages.py",
        """
        import servekit as sk

        @sk.deployment
        class Preprocess:
            def __call__(self, text):
                return text.strip()
        """,
    )
    project.load("model")
    project.load_more("stages")
    return project


def nodes() -> dict[str, DeploymentNode]:
    model, stages = sys.modules["model"], sys.modules["stages"]
    return {
        **build_graph(model.Model.bind()).nodes,
        **build_graph(stages.Preprocess.bind()).nodes,
    }


def test_an_edit_to_an_imported_helper_changes_only_the_fingerprints_of_deployments_that_import_it(
    split_app: UserProject,
) -> None:
    before = {name: fingerprint(node) for name, node in nodes().items()}

    split_app.write("helpers.py", HELPERS.replace("{WORD} {name}", "{WORD}, {name}!"))
    after = {name: fingerprint(node) for name, node in nodes().items()}

    assert after["Model"] != before["Model"]
    assert after["Preprocess"] == before["Preprocess"]


def test_an_edit_to_a_module_imported_through_another_changes_the_fingerprint(split_app: UserProject) -> None:
    model = sys.modules["model"].Model.target
    before = code_fingerprint(model)

    split_app.write("words.py", "WORD = 'howdy, partner'\n")

    assert code_fingerprint(model) != before


def test_the_ray_code_version_rolls_the_same_deployments(split_app: UserProject) -> None:
    before = {name: code_version(node) for name, node in nodes().items()}

    split_app.write("words.py", "WORD = 'howdy, partner'\n")
    after = {name: code_version(node) for name, node in nodes().items()}

    assert after["Model"] != before["Model"]
    assert after["Preprocess"] == before["Preprocess"]


def test_the_same_code_gives_the_same_fingerprint(split_app: UserProject) -> None:
    first = {name: fingerprint(node) for name, node in nodes().items()}

    split_app.load("model")  # imported again: new class objects, the same source
    split_app.load_more("stages")

    assert {name: fingerprint(node) for name, node in nodes().items()} == first
