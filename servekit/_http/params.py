"""Turn an HTTP request into an endpoint method's arguments, validated with pydantic.

Each parameter has one source, decided once from its annotation:
- `starlette.requests.Request` -> the raw request;
- a name in the path template (`/items/{item_id}`) -> the path;
- `bytes` -> the raw body;
- a pydantic model, dict, list, tuple or set -> the JSON body (the whole body when it is the only
  body parameter, else the body's key of the parameter's name);
- anything else (str, int, float, bool, enums, optionals) -> the query string.

In strict mode (`@endpoint(strict=True)` or the app's default) the body is validated with pydantic's
strict JSON mode (`1` is a float, `false` and `"1"` are not), and a path or query string counts as
the JSON number or boolean it spells only where the parameter's type takes no string: `?n=5` is an
int, `?n=5.0` is not; `?flag=true` is a bool, `?flag=yes` and `?flag=1` are not.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter, create_model
from pydantic_core import from_json, to_json
from starlette.requests import Request
from starlette.routing import compile_path

from servekit.errors import BadRequestError, GraphError, RequestValidationError


@dataclass
class EndpointParams:
    """How to build one endpoint's arguments from a request, with the adapters prebuilt."""

    request_param: str | None = None
    raw_body_param: str | None = None
    path_params: list[str] = field(default_factory=list)
    query_params: list[str] = field(default_factory=list)
    body_params: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    params_adapter: TypeAdapter[Any] | None = None
    body_adapter: TypeAdapter[Any] | None = None
    body_required: bool = True
    strict: bool = False
    param_adapters: dict[str, TypeAdapter[Any]] = field(default_factory=dict)
    """Each path and query parameter's own type, to read its string strictly (strict mode only)."""

    @property
    def single_body(self) -> str | None:
        """The parameter that takes the whole body, when there is exactly one body parameter."""
        return next(iter(self.body_params)) if len(self.body_params) == 1 else None

    async def bind(self, request: Request) -> dict[str, Any]:
        """The keyword arguments for the method; raises 400/422 errors that name the problem."""
        kwargs: dict[str, Any] = {}
        if self.request_param:
            kwargs[self.request_param] = request
        if self.params_adapter is not None:
            kwargs.update(self._bind_params(request))
        if self.raw_body_param:
            kwargs[self.raw_body_param] = await request.body()
        elif self.body_adapter is not None:
            kwargs.update(self._bind_body(await request.body()))
        return kwargs

    def _bind_params(self, request: Request) -> dict[str, Any]:
        assert self.params_adapter is not None
        raw: dict[str, Any] = dict(request.path_params)
        query = request.query_params
        for name in self.query_params:
            if name in query:
                raw[name] = query[name]
        try:
            if self.strict:
                wire = {name: _wire_value(self.param_adapters[name], value) for name, value in raw.items()}
                model = self.params_adapter.validate_json(to_json(wire), strict=True)
            else:
                model = self.params_adapter.validate_python(raw)
        except pydantic.ValidationError as exc:
            errors = _errors(exc)
            for error in errors:
                name = error["loc"][0] if error["loc"] else ""
                error["loc"] = ["path" if name in self.path_params else "query", *error["loc"]]
                if len(error["loc"]) == 2 and "input" in error and name in raw:
                    error["input"] = raw[name]  # as sent, not as read in strict mode
            raise RequestValidationError(_summary("invalid parameters", errors), errors) from None
        return {name: getattr(model, name) for name in (*self.path_params, *self.query_params)}

    def _bind_body(self, body: bytes) -> dict[str, Any]:
        assert self.body_adapter is not None
        if not body.strip():
            if self.body_required:
                error = {
                    "type": "missing",
                    "loc": ["body"],
                    "msg": "a JSON request body is required",
                }
                raise RequestValidationError("a JSON request body is required", [error])
            return {}
        try:
            value = self.body_adapter.validate_json(body, strict=self.strict)
        except pydantic.ValidationError as exc:
            raise _body_error(exc, body) from None
        single = self.single_body
        if single is not None:
            return {single: value}
        return {name: getattr(value, name) for name in self.body_params}


_JSON_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false")
_TYPE_MISMATCHES = frozenset({"enum", "literal_error"})


def _wire_value(adapter: TypeAdapter[Any], value: Any) -> Any:
    """What a path or query string stands for in strict mode: the string itself, or the JSON number
    or boolean it spells when the parameter's type takes no string."""
    if not isinstance(value, str) or not _JSON_SCALAR.fullmatch(value):
        return value
    try:
        adapter.validate_json(to_json(value), strict=True)
    except pydantic.ValidationError as exc:
        kinds = {error["type"] for error in exc.errors()}
        if all(kind.endswith("_type") or kind in _TYPE_MISMATCHES for kind in kinds):
            return from_json(value)
    return value


def _body_error(exc: pydantic.ValidationError, body: bytes) -> Exception:
    errors = _errors(exc)
    if any(error["type"] == "json_invalid" for error in errors):
        try:
            from_json(body)
        except ValueError as parse_error:
            return BadRequestError(f"malformed JSON body: {parse_error}")
    for error in errors:
        error["loc"] = ["body", *error["loc"]]
    return RequestValidationError(_summary("invalid request body", errors), errors)


def _errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return typing.cast(list[dict[str, Any]], from_json(exc.json(include_url=False)))


def _summary(what: str, errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what}: {location}: {first['msg']}{more}"


def analyse(func: Callable[..., Any], path: str, owner: str, strict: bool = False) -> EndpointParams:
    """Decide each parameter's source for `func` served at `path`; raises `GraphError` if unusable.

    `strict` validates the request without pydantic's lax coercions (see the module docstring).
    """
    path_names = set(compile_path(path)[2])
    hints = typing.get_type_hints(func, include_extras=True)
    params = EndpointParams(strict=strict)
    fields: dict[str, Any] = {}
    for name, parameter in _parameters(func, owner):
        annotation = hints.get(name, Any)
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        if _is_request(annotation):
            params.request_param = name
        elif name in path_names:
            params.path_params.append(name)
            fields[name] = (annotation, default)
        elif annotation is bytes:
            params.raw_body_param = name
        elif _is_body(annotation):
            params.body_params[name] = (annotation, default)
        else:
            params.query_params.append(name)
            fields[name] = (annotation, default)
    missing = path_names - set(params.path_params)
    if missing:
        raise GraphError(
            f"endpoint {path!r} of {owner!r}: path parameters {sorted(missing)} are not arguments"
        )
    if fields:
        model = create_model(f"{owner}Params", **fields)
        params.params_adapter = TypeAdapter(model)
        if strict:
            params.param_adapters = {name: TypeAdapter(fields[name][0]) for name in fields}
    _prepare_body(params, owner)
    return params


def _prepare_body(params: EndpointParams, owner: str) -> None:
    single = params.single_body
    if single is not None:
        annotation, default = params.body_params[single]
        params.body_adapter = TypeAdapter(annotation)
        params.body_required = default is ...
    elif params.body_params:
        model = create_model(f"{owner}Body", **params.body_params)  # type: ignore[call-overload]
        params.body_adapter = TypeAdapter(model)
        params.body_required = any(default is ... for _, default in params.body_params.values())


def _parameters(func: Callable[..., Any], owner: str) -> list[tuple[str, inspect.Parameter]]:
    result = []
    for name, parameter in inspect.signature(func).parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise GraphError(f"endpoint {owner!r}: *args/**kwargs cannot be taken from a request")
        if name != "self":
            result.append((name, parameter))
    return result


def _is_request(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, Request)


def _is_body(annotation: Any) -> bool:
    for candidate in _union_members(annotation):
        origin = typing.get_origin(candidate) or candidate
        if inspect.isclass(origin) and issubclass(origin, BaseModel | dict | list | tuple | set):
            return True
    return False


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
