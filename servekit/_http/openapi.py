"""The OpenAPI 3.1 document of an app's endpoints, generated from their pydantic types."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import TypeAdapter

from servekit._http.routes import EndpointRoute

_REF = "#/components/schemas/{model}"
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def openapi_document(title: str, version: str, routes: list[EndpointRoute]) -> dict[str, Any]:
    """OpenAPI for `routes`, with shared models under `components/schemas`."""
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for route in routes:
        operation = _operation(route, schemas)
        for method in route.methods:
            paths.setdefault(_openapi_path(route.path), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(route: EndpointRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    params = route.params
    operation: dict[str, Any] = {
        "operationId": route.method_name,
        "summary": (inspect.getdoc(route.func) or route.method_name).split("\n")[0],
        "responses": _responses(route, schemas),
    }
    parameters = [_parameter(name, "path", route, schemas) for name in params.path_params]
    parameters += [_parameter(name, "query", route, schemas) for name in params.query_params]
    if parameters:
        operation["parameters"] = parameters
    if params.body_adapter is not None:
        operation["requestBody"] = {
            "required": params.body_required,
            "content": {"application/json": {"schema": _schema(params.body_adapter, schemas)}},
        }
    elif params.raw_body_param:
        operation["requestBody"] = {"content": {"application/octet-stream": {"schema": {}}}}
    return operation


def _responses(route: EndpointRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    returned = typing.get_type_hints(route.func).get("return", Any)
    if route.streaming:
        ok: dict[str, Any] = {"description": "A stream of chunks (SSE or JSON lines)"}
    elif returned in (Any, None, type(None)) or not _json_type(returned):
        ok = {"description": "Successful response"}
    else:
        content = {"application/json": {"schema": _schema(TypeAdapter(returned), schemas)}}
        ok = {"description": "Successful response", "content": content}
    responses: dict[str, Any] = {"200": ok}
    for status, text in (("422", "Validation error"), ("503", "Overloaded"), ("504", "Timeout")):
        responses[status] = {"description": text, **error}
    return responses


def _parameter(name: str, where: str, route: EndpointRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    adapter = route.params.params_adapter
    assert adapter is not None
    model_schema = _schema(adapter, schemas, inline=True)
    schema = model_schema.get("properties", {}).get(name, {})
    required = where == "path" or name in model_schema.get("required", [])
    return {"name": name, "in": where, "required": required, "schema": schema}


def _schema(adapter: TypeAdapter[Any], schemas: dict[str, Any], inline: bool = False) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    title = schema.get("title")
    if inline or schema.get("type") != "object" or not isinstance(title, str):
        return schema
    schemas[title] = schema
    return {"$ref": _REF.format(model=title)}


def _json_type(annotation: Any) -> bool:
    try:
        TypeAdapter(annotation).json_schema()
    except Exception:  # Starlette responses and arbitrary classes have no JSON schema
        return False
    return True


def _openapi_path(path: str) -> str:
    parts = (p.split(":")[0] + "}" if p.startswith("{") and ":" in p else p for p in path.split("/"))
    return "/".join(parts)
