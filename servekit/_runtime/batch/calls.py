"""Turn an input row into a call of the app's ingress method, and its answer into an output row.

Which method: `--endpoint PATH` (an `@endpoint`), `--method NAME`, or the ingress's only endpoint
(else `__call__`). A row's columns (renamed by the mapping, `column -> field`) become the
method's keyword arguments, or the fields of its one pydantic model parameter.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, create_model

from servekit._replica.batching import batched_state
from servekit._spec.endpoint import endpoint_spec
from servekit._spec.graph import AppGraph
from servekit.errors import DeploymentOptionError


@dataclass(frozen=True)
class CallPlan:
    """How rows become calls of one method."""

    method: str
    fields: tuple[str, ...]
    """The fields the method takes (keyword arguments, or its model's fields)."""
    required: tuple[str, ...]
    model: type[BaseModel] | None
    mapping: Mapping[str, str]
    model_param: str = ""
    """The one parameter that takes the model (when the method takes a model)."""
    validator: type[BaseModel] | None = None
    """The keyword arguments' annotated types (when the method takes plain arguments), which
    check each row as the HTTP edge checks a request's parameters."""

    def arguments(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments for `row`, validated against the method's annotations
        (a bad row raises pydantic's `ValidationError`, naming the field)."""
        values = {self.mapping.get(column, column): value for column, value in row.items()}
        if self.model is not None:
            return {self.model_param: self.model.model_validate(values)}
        given = {name: values[name] for name in self.fields if name in values}
        if self.validator is None:
            return given
        checked = self.validator.model_validate(given)
        return {name: getattr(checked, name) for name in given}

    def check_columns(self, columns: list[str]) -> None:
        """Refuse a mapping from a column the input lacks, or a required field no column gives."""
        missing_sources = [column for column in self.mapping if column not in columns]
        if missing_sources:
            raise DeploymentOptionError(
                f"--map names input columns {missing_sources} that the input does not have "
                f"(its columns: {columns})"
            )
        given = {self.mapping.get(column, column) for column in columns}
        lacking = [field for field in self.required if field not in given]
        if lacking:
            example = f"--map COLUMN={lacking[0]}"
            raise DeploymentOptionError(
                f"{self.method} needs {lacking}, which no input column gives (columns: {columns}); "
                f"rename a column with {example}"
            )


def output_row(index: int, result: Any) -> dict[str, Any]:
    """The output row for input row `index`: its number, then the result's fields (or `result`)."""
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    if isinstance(result, dict):
        return {"row": index, **result}
    return {"row": index, "result": result}


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """`["col=field", ...]` as a dict; a pair without `=` is refused."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = pair.partition("=")
        if not sep or not column or not field:
            raise DeploymentOptionError(f"--map takes COLUMN=FIELD, like text=review; got {pair!r}")
        mapping[column] = field
    return mapping


def plan_calls(
    graph: AppGraph, endpoint: str | None, method: str | None, mapping: Mapping[str, str]
) -> CallPlan:
    """The plan for calling the ingress's method chosen by `endpoint` or `method`."""
    deployment = graph.ingress_node.deployment
    target = deployment.target
    name, func = _choose(target, deployment.is_function, endpoint, method, deployment.name)
    params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    hints = typing.get_type_hints(func)
    if len(params) == 1 and _is_model(hints.get(params[0].name)):
        model: type[BaseModel] = hints[params[0].name]
        fields = tuple(model.model_fields)
        required = tuple(n for n, f in model.model_fields.items() if f.is_required())
        return CallPlan(name, fields, required, model, dict(mapping), params[0].name)
    fields = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    required = tuple(p.name for p in params if p.default is p.empty and p.name in fields)
    batched = batched_state(func) is not None  # an `@batch` method takes lists: check one item
    types = {
        p.name: (_item_type(hints.get(p.name, Any)) if batched else hints.get(p.name, Any), None)
        for p in params
        if p.name in fields
    }
    validator = create_model(f"{name}_arguments", **types)  # type: ignore[call-overload]
    return CallPlan(name, fields, required, None, dict(mapping), validator=validator)


def _item_type(annotation: Any) -> Any:
    """The element type of a batched parameter's `list[T]` (Any when not so annotated)."""
    args = typing.get_args(annotation)
    return args[0] if typing.get_origin(annotation) is list and args else Any


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _choose(
    target: Any, is_function: bool, endpoint: str | None, method: str | None, owner: str
) -> tuple[str, Callable[..., Any]]:
    if is_function:
        return "__call__", target
    members = inspect.getmembers(target, callable)
    endpoints = {spec.path: (n, m) for n, m in members if (spec := endpoint_spec(m)) is not None}
    if endpoint is not None:
        if endpoint not in endpoints:
            raise DeploymentOptionError(
                f"--endpoint {endpoint!r}: {owner} has no such endpoint; it has {sorted(endpoints) or 'none'}"
            )
        return endpoints[endpoint]
    if method is not None:
        func = getattr(target, method, None)
        if func is None or (method.startswith("_") and method != "__call__"):
            raise DeploymentOptionError(f"--method {method!r}: {owner} has no such public method")
        return method, func
    if len(endpoints) == 1:
        return next(iter(endpoints.values()))
    call = getattr(target, "__call__", None)  # noqa: B004
    if inspect.isfunction(call):
        return "__call__", call
    raise DeploymentOptionError(
        f"{owner} has {len(endpoints)} endpoints ({sorted(endpoints)}); choose with --endpoint or --method"
    )
