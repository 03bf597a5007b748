"""The structured access log: one record per HTTP request, on the `servekit.access` logger.

In: each HTTP request the app serves. Out: when the request is done, one INFO record whose
message reads ``127.0.0.1:50412 "POST /classify" 200 3.2ms`` and whose fields (written as keys
of the JSON line with ``log_format="json"``) are method, path, route, status, duration_ms,
bytes and client; the request id and trace id come from the logging filter, as on every
record written while serving the request. Installed only with ``access_log=True``.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit._telemetry.logs import FIELDS_ATTR

logger = logging.getLogger("servekit.access")


class AccessLog:
    """Logs each HTTP request once its response is sent (or its handling failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            _log(scope, status or 500, (time.perf_counter() - started) * 1000, sent)


def _log(scope: Scope, status: int, duration_ms: float, sent: int) -> None:
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    method, path = scope["method"], scope["path"]
    fields = {
        "method": method,
        "path": path,
        "route": getattr(scope.get("route"), "path", None),
        "status": status,
        "duration_ms": round(duration_ms, 3),
        "bytes": sent,
        "client": where,
    }
    logger.info('%s "%s %s" %d %.1fms', where, method, path, status, duration_ms, extra={FIELDS_ATTR: fields})
