"""The typed option keywords stay equal to the pydantic models that validate them."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

import pytest
from pydantic import BaseModel

import servekit as sk
from servekit._runtime.options import RunKeywords, RunOptions, run_options
from servekit._spec.config import DeploymentConfig, DeploymentOptions
from servekit.errors import DeploymentOptionError


def _members(annotation: Any) -> set[Any]:
    """The types a union annotation allows (a lone type is a union of one)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return set(typing.get_args(annotation))
    return {annotation}


@pytest.mark.parametrize(
    ("keywords", "model"),
    [(DeploymentOptions, DeploymentConfig), (RunKeywords, RunOptions)],
    ids=["deployment", "run"],
)
def test_typed_keywords_match_the_model(keywords: type, model: type[BaseModel]) -> None:
    hints = typing.get_type_hints(keywords)
    assert set(hints) == set(model.model_fields)
    for name, field in model.model_fields.items():
        allowed = _members(hints[name])
        assert _members(field.annotation) <= allowed, name


def test_run_options_default_to_the_local_backend() -> None:
    options = run_options()
    assert options == RunOptions(backend="local", loop="auto")
    assert options.model_fields_set == set()


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"backend": "k8s"}, "backend 'k8s' is unknown; use one of 'local', 'ray'"),
        ({"gpus": "0,x"}, "^gpus='0,x' is not a list of GPU ids"),
        ({"start_timeout_s": 0}, "start_timeout_s=0 is invalid"),
        ({"loop": "trio"}, "loop='trio' is invalid"),
        ({"adress": "auto"}, "unknown option 'adress'; valid options are: backend, address"),
    ],
)
def test_bad_run_options_name_the_option(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(DeploymentOptionError, match=message.replace("(", r"\(")):
        run_options(**keywords)


def test_cluster_only_options_are_refused_by_the_local_backend() -> None:
    @sk.deployment
    def echo(x: int) -> int:
        return x

    with pytest.raises(DeploymentOptionError, match="wait_for_nodes is for the Ray backend"):
        sk.run(echo.bind(), wait_for_nodes=True)
    with pytest.raises(DeploymentOptionError, match="address='auto' is for the Ray backend"):
        sk.run(echo.bind(), address="auto")
