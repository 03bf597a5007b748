"""Render every failure as the one JSON error body: `{"error": {"type": ..., "message": ...}}`.

A 5xx body also carries the request's id (`"request_id"`, the `x-request-id` header's value), so
a report of a server error leads straight to its log lines and trace.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from servekit._replica.request_context import current_request
from servekit.errors import (
    MethodNotAllowedError,
    NotFoundError,
    RequestError,
    ServekitError,
    UserCodeError,
)

logger = logging.getLogger("servekit.http")

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    503: "unavailable",
    504: "timeout",
}


def json_error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A response with the standard error body (a 5xx one with the request id)."""
    if status >= 500:
        request = current_request()
        if request is not None:
            error = {**error, "request_id": request.request_id}
    body = to_json({"error": error})
    return Response(body, status, headers=headers, media_type="application/json")


def error_response(exc: BaseException, request: Request | None = None) -> Response:
    """The response for any exception: servekit errors and HTTPExceptions by their status, others 500."""
    if isinstance(exc, ServekitError) and not isinstance(exc, UserCodeError):
        return json_error(exc.status_code, exc.to_dict(), exc.headers())
    if isinstance(exc, HTTPException):  # raised on purpose by user code: keep its status
        return _http_exception(exc)
    if isinstance(exc, ClientDisconnect):
        return client_gone(request)
    return internal_error(exc, request)


CLIENT_CLOSED_REQUEST = 499
"""The status logged for a request whose client left before sending its body (nginx's code)."""


def client_gone(request: Request | None) -> Response:
    """The client disconnected before its body arrived: nothing to answer, nothing went wrong here."""
    where = f"{request.method} {request.url.path}" if request is not None else "request"
    logger.debug("client disconnected before sending the body of %s", where)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def internal_error(exc: BaseException, request: Request | None) -> Response:
    """A 500 with an error id; the traceback goes to the log under that id, never to the client."""
    error_id = uuid.uuid4().hex[:16]
    where = f"{request.method} {request.url.path}" if request is not None else "request"
    logger.error("error %s in %s", error_id, where, exc_info=exc)
    message = (
        f"internal error in user code ({type(exc).__name__}); see the server log for error_id {error_id}"
    )
    return json_error(500, {"type": "internal_error", "message": message, "error_id": error_id})


def _http_exception(exc: HTTPException) -> Response:
    status = exc.status_code
    error: dict[str, Any] = {
        "type": _STATUS_TYPES.get(status, "http_error"),
        "message": str(exc.detail),
    }
    return json_error(status, error, dict(exc.headers or {}))


async def router_error(request: Request, exc: Exception) -> Response:
    """Starlette's router errors (unknown path, wrong method) in servekit's error shape."""
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        return error_response(NotFoundError(f"no route for {request.method} {request.url.path}"))
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        allowed = [m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()]
        return error_response(
            MethodNotAllowedError(
                f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}",
                allowed,
            )
        )
    if isinstance(exc, HTTPException | RequestError):
        return error_response(exc, request)
    return internal_error(exc, request)
