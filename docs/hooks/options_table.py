"""mkdocs hook: render servekit's option models as Markdown tables.

A page writes ``<!-- options: DeploymentConfig -->`` (or ``Resources``, ``Autoscaling``, ``RunOptions``)
and gets a table built from the pydantic model's fields, so the documented options,
defaults and descriptions are always the ones the code validates.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import servekit as sk

_MARKER = re.compile(r"<!--\s*options:\s*(\w+)\s*-->")
_MODELS: dict[str, type[BaseModel]] = {
    "DeploymentConfig": sk.DeploymentConfig,
    "Resources": sk.Resources,
    "Autoscaling": sk.Autoscaling,
    "Canary": sk.Canary,
    "RunOptions": sk.RunOptions,
    "JobOptions": sk.JobOptions,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every options marker with its table."""
    return _MARKER.sub(lambda match: _table(_model(match.group(1))), markdown)


def _model(name: str) -> type[BaseModel]:
    if name not in _MODELS:
        raise ValueError(f"unknown options model {name!r}; known: {sorted(_MODELS)}")
    return _MODELS[name]


def _table(model: type[BaseModel]) -> str:
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{name}` | `{_type_name(field.annotation)}` | {_default(field)} | {field.description or ''} |"
        )
    return "\n".join(rows) + "\n"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        # a "|" inside a code span does not split a Markdown table cell
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory.__name__}()`"  # type: ignore[union-attr]
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`"
