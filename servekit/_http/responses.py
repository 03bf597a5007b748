"""Turn what an endpoint returns (or streams) into an HTTP response."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from servekit._http.errors import logger
from servekit.errors import ServekitError, UserCodeError

_JSON = "application/json"


def render(result: Any) -> Response:
    """A response for `result`: Starlette responses as they are, bytes, text, or JSON."""
    if isinstance(result, Response):
        return result
    if isinstance(result, bytes | bytearray | memoryview):
        return Response(bytes(result), media_type="application/octet-stream")
    if isinstance(result, str):
        return Response(result, media_type="text/plain; charset=utf-8")
    return Response(to_json(result), media_type=_JSON)


def wants_sse(request: Request) -> bool:
    """Whether the client asked for Server-Sent Events."""
    return "text/event-stream" in request.headers.get("accept", "")


def stream_response(first: Any, rest: AsyncIterator[Any], sse: bool) -> StreamingResponse:
    """Stream chunks: as SSE events, or chunked (bytes/str as they are, other values as JSON lines)."""
    media_type = "text/event-stream" if sse else "application/x-ndjson"
    encode = _sse_event if sse else _chunk
    return StreamingResponse(_encoded(first, rest, encode, sse), media_type=media_type)


async def _encoded(first: Any, rest: AsyncIterator[Any], encode: Any, sse: bool) -> AsyncIterator[bytes]:
    yield encode(first)
    try:
        async for chunk in rest:
            yield encode(chunk)
    except Exception as exc:  # the status is sent already: end the stream with an error chunk
        error = {"error": _stream_error(exc)}
        yield ((b"event: error\ndata: " + to_json(error) + b"\n\n") if sse else to_json(error) + b"\n")


def _stream_error(exc: Exception) -> dict[str, Any]:
    """The error chunk's body: servekit's own errors as they are (a timeout: type "timeout", with
    the status it would have had); a failure in user code by its type only (details go to the log)."""
    if isinstance(exc, ServekitError) and not isinstance(exc, UserCodeError):
        return {**exc.to_dict(), "status": exc.status_code}
    logger.error("stream failed after it started", exc_info=exc)
    return {"type": "stream_error", "message": f"the stream failed: {type(exc).__name__}"}


def _chunk(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode()
    return to_json(chunk) + b"\n"


def _sse_event(chunk: Any) -> bytes:
    data = chunk.encode() if isinstance(chunk, str) else chunk if isinstance(chunk, bytes) else to_json(chunk)
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return lines + b"\n"
