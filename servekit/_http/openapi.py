"""The OpenAPI 3.1 document of an app: its endpoints from their pydantic types, and the built-in routes.

Routes and the server's limits in, a JSON-ready document out. Every operation lists every status
the server itself can answer it with, each error with the one error body (`Error` under
`components/schemas`, see `servekit._http.errors`) and its headers (`Allow`, `Retry-After`).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import TypeAdapter

from servekit._http.routes import EndpointRoute

_REF = "#/components/schemas/{model}"
ERROR_SCHEMA_NAME = "Error"

_ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "description": "The body of every error response.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "description": "A stable machine-readable name of the error.",
                    "examples": ["bad_request", "validation_error", "overloaded", "timeout"],
                },
                "message": {"type": "string", "description": "What went wrong, for people."},
                "errors": {
                    "type": "array",
                    "description": "422 only: each mismatch, as pydantic reports it.",
                    "items": {
                        "type": "object",
                        "required": ["type", "loc", "msg"],
                        "properties": {
                            "type": {"type": "string"},
                            "loc": {
                                "type": "array",
                                "description": "Where: 'body', 'query' or 'path', then the field.",
                                "items": {"type": ["string", "integer"]},
                            },
                            "msg": {"type": "string"},
                            "input": {},
                            "ctx": {"type": "object"},
                        },
                    },
                },
                "error_id": {"type": "string", "description": "500 only: the id in the server log."},
                "limit_bytes": {"type": "integer", "description": "413 only: the body size limit."},
                "retry_after_s": {
                    "type": "number",
                    "description": "503 overloaded only: when a retry is likely to be admitted.",
                },
            },
        }
    },
}

_BUILTIN_SCHEMAS: dict[str, Any] = {
    ERROR_SCHEMA_NAME: _ERROR_SCHEMA,
    "Health": {
        "title": "Health",
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "title": "Readiness",
        "type": "object",
        "required": ["ready", "state"],
        "properties": {"ready": {"type": "boolean"}, "state": {"type": "string"}},
    },
    "AppStatus": {
        "title": "AppStatus",
        "description": "The app's state and, per deployment, its replicas, load and queue.",
        "type": "object",
        "required": ["state", "deployments"],
        "properties": {
            "state": {"type": "string"},
            "ready": {"type": "boolean"},
            "deployments": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
}

_JOB_SCHEMA: dict[str, Any] = {
    "title": "Job",
    "description": "An async job's status (served at /-/jobs/{job_id}).",
    "type": "object",
    "required": ["id", "state", "target", "attempts", "max_attempts", "created_at", "links"],
    "properties": {
        "id": {"type": "string"},
        "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "target": {"type": "string", "description": "What the job calls, like 'POST /summarize'."},
        "attempts": {"type": "integer", "description": "Attempts started so far (at-least-once)."},
        "max_attempts": {"type": "integer"},
        "priority": {"type": "integer"},
        "progress": {"type": ["number", "null"], "description": "What user code reported, 0 to 1."},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "error": {"type": ["object", "null"], "description": "The last failed attempt's error."},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_BUILTIN_SCHEMAS["Job"] = _JOB_SCHEMA
_BUILTIN_SCHEMAS["JobList"] = {
    "title": "JobList",
    "type": "object",
    "required": ["jobs", "next_cursor"],
    "properties": {
        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
        "next_cursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page."},
    },
}

_ALLOW = {"description": "The methods the path accepts.", "schema": {"type": "string"}}
_INTERNAL_ERROR = "Internal error (user code raised); the traceback is in the server log under error_id."
_RETRY_AFTER = {
    "description": "Seconds after which a retry is likely to be admitted.",
    "schema": {"type": "integer", "minimum": 1},
}


def openapi_document(
    title: str, version: str, routes: list[EndpointRoute], max_body_bytes: int
) -> dict[str, Any]:
    """OpenAPI for `routes` and the built-in routes, with shared models under `components/schemas`."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in routes:
        for method in route.methods:
            operation = _operation(route, method, schemas, max_body_bytes)
            paths.setdefault(_openapi_path(route.path), {})[method.lower()] = operation
    schemas.update(_BUILTIN_SCHEMAS)
    for path, item in _builtin_paths(max_body_bytes).items():  # built-ins win, as in the router
        paths.setdefault(path, {}).update(item)
    for path, item in router_paths(max_body_bytes).items():
        paths.setdefault(path, {}).update(item)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(
    route: EndpointRoute, method: str, schemas: dict[str, Any], max_body_bytes: int
) -> dict[str, Any]:
    params = route.params
    several = len(route.methods) > 1
    operation: dict[str, Any] = {
        "operationId": f"{route.method_name}_{method.lower()}" if several else route.method_name,
        "summary": (inspect.getdoc(route.func) or route.method_name).split("\n")[0],
        "responses": _responses(route, schemas, max_body_bytes),
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


def _responses(route: EndpointRoute, schemas: dict[str, Any], max_body_bytes: int) -> dict[str, Any]:
    params = route.params
    responses: dict[str, Any] = {"200": _success(route, schemas)}
    if route.mode == "async":
        responses = {"202": _accepted()}
    if params.body_adapter is not None:
        responses["400"] = _error("The body is not valid JSON.")
    if params.path_params:
        responses["404"] = _error("Nothing at this path: the path value matches no route or no item.")
    responses.update(_common_errors(max_body_bytes))
    if params.body_adapter is not None or params.params_adapter is not None:
        responses["422"] = _error("The body, path or query does not match the declared types.")
    responses["500"] = _error(_INTERNAL_ERROR)
    responses["503"] = _error(
        "Overloaded (every replica busy and the queue full) or not running; retry after Retry-After.",
        {"Retry-After": _RETRY_AFTER},
    )
    responses["504"] = _error("The request ran past request_timeout_s; its work was cancelled.")
    return dict(sorted(responses.items()))


def _success(route: EndpointRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    returned = typing.get_type_hints(route.func).get("return", Any)
    if route.streaming:
        return {"description": "A stream of chunks (SSE or JSON lines)"}
    if returned in (Any, None, type(None)) or not _json_type(returned):
        return {"description": "Successful response"}
    content = {"application/json": {"schema": _schema(TypeAdapter(returned), schemas)}}
    return {"description": "Successful response", "content": content}


def _accepted() -> dict[str, Any]:
    location = {"description": "The job: /-/jobs/{job_id}.", "schema": {"type": "string"}}
    return {
        **_json_response("Accepted as an async job; poll Location", "Job"),
        "headers": {"Location": location},
    }


def _common_errors(max_body_bytes: int) -> dict[str, Any]:
    """The errors any route can answer: another method on its path, a body over the limit."""
    return {
        "405": _error("The path does not take this method; Allow lists those it takes.", {"Allow": _ALLOW}),
        "413": _error(f"The request body is over the server's limit of {max_body_bytes} bytes."),
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=ERROR_SCHEMA_NAME)}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json_response(description: str, schema_name: str) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": _REF.format(model=schema_name)}}}
    return {"description": description, "content": content}


def _builtin_paths(max_body_bytes: int) -> dict[str, Any]:
    def operation(name: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        all_responses = {**responses, **_common_errors(max_body_bytes), "500": _error(_INTERNAL_ERROR)}
        return {
            "get": {
                "operationId": f"servekit_{name}",
                "summary": summary,
                "tags": ["servekit"],
                "responses": dict(sorted(all_responses.items())),
            }
        }

    return {
        **_jobs_paths(max_body_bytes),
        "/healthz": operation("healthz", "Liveness", {"200": _json_response("The server runs", "Health")}),
        "/readyz": operation(
            "readyz",
            "Readiness",
            {
                "200": _json_response("Every deployment runs its replicas", "Readiness"),
                "503": _json_response("Not ready yet (or stopping)", "Readiness"),
            },
        ),
        "/-/status": operation(
            "status", "The app's state", {"200": _json_response("The app's state", "AppStatus")}
        ),
        "/openapi.json": operation(
            "openapi",
            "This document",
            {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
        ),
    }


_ROUTER_ERRORS = {
    "400": _error("A bad body or weight map (negative, all zero, unknown arm); the router is unchanged"),
    "404": _error("No router of that name, or (under /-/rollouts) the router has no canary"),
    "409": _error("A canary action its state does not allow (it ended), or a canary already runs"),
}
_ROUTER_BODIES = {
    "weights": {"weights": {"v1": 90, "v2": 10}},
    "switch": {"to": "green", "bake_s": 60, "warmup": {"method": "__call__", "args": [1]}},
    "outcomes": {"request_id": "4f0c...", "name": "clicked", "value": 1},
    "canary": {"candidate": "v2", "baseline": "v1", "steps": [10, 50, 100], "bake_s": 60, "min_samples": 200},
    "promote": {"full": False},
}


def router_paths(max_body_bytes: int) -> dict[str, Any]:
    """The `/-/routers` admin API (JSON in and out)."""

    def operation(name: str, summary: str, body: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": f"servekit_routers_{name}",
            "summary": summary,
            "tags": ["servekit routers"],
            "responses": {
                "200": {
                    "description": "The router's state",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_ROUTER_ERRORS,
                **_common_errors(max_body_bytes),
                "500": _error(_INTERNAL_ERROR),
                "503": _error("A switch's arm has no running replica, or its warm-up call failed"),
            },
        }
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}, "example": _ROUTER_BODIES[body]}
                },
            }
        return op

    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/-/routers": {"get": operation("list", "Every router: weights, arms, counters")},
        "/-/routers/{name}": {"get": {**operation("get", "One router"), "parameters": name}},
        "/-/routers/{name}/weights": {
            "put": {**operation("set_weights", "Set the weights", "weights"), "parameters": name},
            "post": {**operation("set_weights_post", "Set the weights", "weights"), "parameters": name},
        },
        "/-/routers/{name}/switch": {
            "post": {
                **operation("switch", "Blue/green: all traffic to one arm", "switch"),
                "parameters": name,
            }
        },
        "/-/routers/{name}/switch-back": {
            "post": {**operation("switch_back", "Undo the last switch"), "parameters": name}
        },
        "/-/routers/{name}/outcomes": {
            "post": {
                **operation("outcomes", "Credit an outcome to the arm that served a request", "outcomes"),
                "parameters": name,
            }
        },
        "/-/rollouts": {"get": operation("rollouts", "Every router's canary: state, step, checks, events")},
        "/-/rollouts/{name}": {"get": {**operation("rollout", "One router's canary"), "parameters": name}},
        "/-/rollouts/{name}/canary": {
            "post": {
                **operation("start_canary", "Start a canary between two arms", "canary"),
                "parameters": name,
            }
        },
        **{
            f"/-/rollouts/{{name}}/{action}": {
                "post": {**operation(f"canary_{action}", summary, body), "parameters": name}
            }
            for action, summary, body in (
                ("pause", "Hold the canary's step (409 once it ended)", None),
                ("resume", "Let the canary promote again", None),
                ("promote", "Promote now: the next step, or 100% with full", "promote"),
                ("abort", "Roll back to 100% baseline now", None),
            )
        },
    }


def _jobs_paths(max_body_bytes: int) -> dict[str, Any]:
    def operation(name: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        errors = {**_common_errors(max_body_bytes), "500": _error(_INTERNAL_ERROR)}
        errors["503"] = _error("The job store cannot be reached.", {"Retry-After": _RETRY_AFTER})
        return {
            "operationId": f"servekit_{name}",
            "summary": summary,
            "tags": ["servekit", "jobs"],
            "responses": dict(sorted({**errors, **responses}.items())),
            **extra,
        }

    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    not_found = _error("No job has this id (it never existed, or its result expired).")
    listing = [
        {"name": "state", "in": "query", "required": False, "schema": _JOB_SCHEMA["properties"]["state"]},
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    return {
        "/-/jobs": {
            "get": operation(
                "list_jobs",
                "Async jobs, oldest first, a page at a time",
                {
                    "200": _json_response("A page of jobs", "JobList"),
                    "400": _error("A bad state, limit or cursor."),
                },
                parameters=listing,
            )
        },
        "/-/jobs/{job_id}": {
            "get": operation(
                "job_status",
                "An async job's status",
                {"200": _json_response("The job", "Job"), "404": not_found},
                parameters=job_id,
            ),
            "delete": operation(
                "cancel_job",
                "Cancel a queued or running job (a finished one is left as it is)",
                {"200": _json_response("The job, cancelled", "Job"), "404": not_found},
                parameters=job_id,
            ),
        },
        "/-/jobs/{job_id}/result": {
            "get": operation(
                "job_result",
                "A finished job's result, as the endpoint renders it (a failed job's error response)",
                {
                    "200": {"description": "The endpoint's response (a failed job: its error status)"},
                    "404": not_found,
                    "409": _error("The job has no result (yet): the error's state says where it is."),
                },
                parameters=job_id,
            )
        },
    }


def _parameter(name: str, where: str, route: EndpointRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    adapter = route.params.params_adapter
    assert adapter is not None
    model_schema = _schema(adapter, schemas, inline=True)
    schema = model_schema.get("properties", {}).get(name, {})
    required = where == "path" or name in model_schema.get("required", [])
    return {"name": name, "in": where, "required": required, "schema": schema}


def _schema(adapter: TypeAdapter[Any], schemas: dict[str, Any], inline: bool = False) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=_REF)
    defs: dict[str, Any] = schema.pop("$defs", {})
    title = schema.get("title")
    name = title if isinstance(title, str) and not inline and schema.get("type") == "object" else None
    if name is not None:
        defs[name] = schema
    renames = {key: f"{key}Model" for key in defs if key in _BUILTIN_SCHEMAS}
    if renames:  # a user model named like one of servekit's schemas gets another name
        defs = {renames.get(key, key): _renamed(value, renames) for key, value in defs.items()}
        schema = _renamed(schema, renames)
    schemas.update(defs)
    if name is not None:
        return {"$ref": _REF.format(model=renames.get(name, name))}
    return schema


def _renamed(schema: Any, renames: dict[str, str]) -> Any:
    """`schema` with its references to the models in `renames` pointing to their new names."""
    if isinstance(schema, list):
        return [_renamed(item, renames) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _renamed(value, renames) for key, value in schema.items()}
    ref = schema.get("$ref")
    for old, new in renames.items():
        if ref == _REF.format(model=old):
            result["$ref"] = _REF.format(model=new)
    return result


def _json_type(annotation: Any) -> bool:
    try:
        TypeAdapter(annotation).json_schema()
    except Exception:  # Starlette responses and arbitrary classes have no JSON schema
        return False
    return True


def _openapi_path(path: str) -> str:
    parts = (p.split(":")[0] + "}" if p.startswith("{") and ":" in p else p for p in path.split("/"))
    return "/".join(parts)
