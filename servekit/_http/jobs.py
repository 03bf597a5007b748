"""Async jobs over HTTP: submitting a request as a job (202 + Location), and the `/-/jobs` routes.

A request to an endpoint with `mode="async"` (or with `Prefer: respond-async`) is validated,
then stored as an "http" job: the request itself (method, path, query, headers, body), so that
the job runs exactly as the request would have, also after a restart. Its result is the
endpoint's normal response (status, media type, body).
"""

from __future__ import annotations

import json
from typing import Any

import cloudpickle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from servekit._http.errors import error_response
from servekit._http.responses import render
from servekit._http.routes import EndpointRoute
from servekit._replica.jobs.records import JOB_STATES, JobRecord, JobResult
from servekit._replica.jobs.service import Executor, JobSlot
from servekit._runtime.interface import ServingRuntime
from servekit._runtime.jobs import PICKLE_TYPE, describe_failure, new_job
from servekit.errors import BadRequestError, NotFoundError

HTTP_KIND = "http"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def wants_async(request: Request) -> bool:
    """Whether the client asked for an async answer (`Prefer: respond-async`, RFC 7240)."""
    for name, value in request.scope["headers"]:  # the raw list: no Headers object per request
        if name == b"prefer" and any(
            token.strip().lower() == b"respond-async" for token in value.replace(b";", b",").split(b",")
        ):
            return True
    return False


def encode_request(request: Request, body: bytes) -> bytes:
    """The stored form of `request`: its parts as a JSON line, then the body."""
    meta = {
        "method": request.method,
        "path": request.url.path,
        "query_string": request.scope.get("query_string", b"").decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "path_params": request.path_params,
    }
    return json.dumps(meta).encode() + b"\n" + body


def decode_request(payload: bytes) -> Request:
    """The request `encode_request` stored, readable again (its body included)."""
    head, _, body = payload.partition(b"\n")
    meta = json.loads(head)
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": meta["method"],
        "scheme": "http",
        "path": meta["path"],
        "raw_path": meta["path"].encode(),
        "root_path": "",
        "query_string": meta["query_string"].encode("latin-1"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]],
        "path_params": meta["path_params"],
        "server": None,
        "client": None,
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def http_executor(runtime: ServingRuntime, deployment: str, routes: list[EndpointRoute]) -> Executor:
    """Runs "http" jobs: binds the stored request to its route's method and renders the result."""
    by_target = {route.job_target: route for route in routes if not route.streaming}

    async def run(record: JobRecord, payload: bytes) -> JobResult:
        route = by_target.get(record.target)
        if route is None:
            raise NotFoundError(f"the app no longer serves {record.target!r} (it was redeployed without it)")
        request = decode_request(payload)
        result = await runtime.call(deployment, route.method_name, (), await route.params.bind(request))
        response = render(result)
        if isinstance(response, StreamingResponse):
            raise BadRequestError("an async job cannot return a streaming response")
        media_type = response.headers.get("content-type", "application/octet-stream")
        return JobResult(response.status_code, media_type, bytes(response.body))

    return Executor(run, describe_failure)


async def submit_request(slot: JobSlot, route: EndpointRoute, request: Request) -> Response:
    """Validate `request`, store it as a job of `route`, and answer 202 with its `Location`."""
    try:
        await route.params.bind(request)  # a bad request is refused now, not as a failed job
        payload = encode_request(request, await request.body())
        job = new_job(
            HTTP_KIND, route.job_target, payload, route.jobs, request.headers.get("idempotency-key")
        )
        service = await slot.service()
        record, _ = await service.submit(job)
    except Exception as exc:
        return error_response(exc, request)
    location = f"/-/jobs/{record.id}"
    headers = {"Location": location, "Preference-Applied": "respond-async"}
    return JSONResponse(record.to_dict(), 202, headers=headers)


def job_routes(slot: JobSlot) -> list[BaseRoute]:
    """`/-/jobs` (list), `/-/jobs/{job_id}` (status, DELETE cancels), `/-/jobs/{job_id}/result`."""

    async def listing(request: Request) -> Response:
        try:
            state, limit, after = _list_query(request)
            service = await slot.service()
            records = await service.list_jobs(state, limit + 1, after)
        except Exception as exc:
            return error_response(exc, request)
        page = records[:limit]
        more = len(records) > limit
        return JSONResponse(
            {"jobs": [r.to_dict() for r in page], "next_cursor": str(page[-1].seq) if more else None}
        )

    async def status_or_cancel(request: Request) -> Response:
        try:
            service = await slot.service()
            job_id = request.path_params["job_id"]
            record = await (service.cancel(job_id) if request.method == "DELETE" else service.get(job_id))
        except Exception as exc:
            return error_response(exc, request)
        return JSONResponse(record.to_dict())

    async def result(request: Request) -> Response:
        try:
            service = await slot.service()
            _, stored = await service.result(request.path_params["job_id"])
            if stored.media_type == PICKLE_TYPE:
                return render(cloudpickle.loads(stored.body))
        except Exception as exc:
            return error_response(exc, request)
        return Response(stored.body, stored.status, media_type=stored.media_type)

    return [
        Route("/-/jobs", listing, methods=["GET"]),
        Route("/-/jobs/{job_id}", status_or_cancel, methods=["GET", "DELETE"]),
        Route("/-/jobs/{job_id}/result", result, methods=["GET"]),
    ]


def _list_query(request: Request) -> tuple[str | None, int, int]:
    query = request.query_params
    state = query.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise BadRequestError(f"state={state!r} is unknown; use one of {', '.join(JOB_STATES)}")
    limit_text = query.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise BadRequestError(f"limit={limit_text!r} must be a whole number from 1 to {MAX_LIMIT}, like 50")
    cursor = query.get("cursor", "0") or "0"
    if not cursor.isdigit():
        raise BadRequestError(f"cursor={cursor!r} is not one this server gave (next_cursor of a page)")
    return state, int(limit_text), int(cursor)
