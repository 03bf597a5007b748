"""Request-aware logs: each record gets the request id, trace id, deployment and replica it was
written for, as text or as one JSON object per line.

In: a `FieldReader` (what the code that configures logging knows how to read: the current
request and replica) and a format. Out: `RequestFields`, a logging filter that stamps those
fields on every record a handler sees (user code's too), the `TextFormatter` and
`JsonFormatter` that write them, and `configure_logging`, which installs them on one stderr
handler of the root logger (replacing its own on a second call, never another's handler).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
FIELDS_ATTR = "servekit_fields"
"""A record attribute holding extra fields (a dict), written as keys of the JSON object:
``logger.info("...", extra={FIELDS_ATTR: {"status": 200}})``."""


class LogFields(NamedTuple):
    """What a log record is about (each None when unknown)."""

    request_id: str | None = None
    trace_id: str | None = None
    deployment: str | None = None
    replica: str | None = None


FieldReader = Callable[[], LogFields]
"""Reads the fields of the code running now (its request, trace and replica)."""


class RequestFields(logging.Filter):
    """Stamps `LogFields` on each record: `request_id`, `trace_id`, `deployment`, `replica`.

    Fields the record already has (set with `extra=`) are kept. `deployment` and `replica` fall
    back to the process's own (a worker process or a Ray actor serves one replica).
    """

    def __init__(
        self, reader: FieldReader, deployment: str | None = None, replica: str | None = None
    ) -> None:
        super().__init__()
        self._reader = reader
        self._deployment = deployment
        self._replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        fields = self._reader()
        values = record.__dict__
        values.setdefault("request_id", fields.request_id)
        values.setdefault("trace_id", fields.trace_id)
        values.setdefault("deployment", fields.deployment or self._deployment)
        values.setdefault("replica", fields.replica or self._replica)
        return True


class TextFormatter(logging.Formatter):
    """``2026-01-02 10:00:00,123 INFO name [request-id]: message`` (the id only within a request)."""

    def __init__(self, timestamps: bool = True) -> None:
        base = "%(levelname)s %(name)s%(request_tag)s: %(message)s"
        super().__init__(f"%(asctime)s {base}" if timestamps else base)

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the request id in brackets when there is one."""
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, trace_id,
    deployment, replica, any extra fields, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "trace_id": getattr(record, "trace_id", None),
            "deployment": getattr(record, "deployment", None),
            "replica": getattr(record, "replica", None),
        }
        extra = getattr(record, FIELDS_ATTR, None)
        if isinstance(extra, dict):
            document.update(extra)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def json_line(message: str, level: str = "INFO", logger: str = "servekit", **fields: Any) -> str:
    """A log line in the JSON format for text that did not come through logging (a worker's output)."""
    document = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        "request_id": None,
        "trace_id": None,
        "deployment": None,
        "replica": None,
        **fields,
    }
    return json.dumps(document, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat, timestamps: bool = True) -> logging.Formatter:
    """The formatter of `log_format` ("text" or "json")."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter(timestamps)
    raise ValueError(f"log format {log_format!r} is unknown; use one of {', '.join(LOG_FORMATS)}")


_OWN = "_servekit_handler"


def configure_logging(
    log_format: LogFormat,
    reader: FieldReader,
    *,
    level: int | str | None = None,
    deployment: str | None = None,
    replica: str | None = None,
    stream: TextIO | None = None,
    timestamps: bool = True,
) -> logging.Handler:
    """Log to `stream` (stderr) from the root logger in `log_format`, with `RequestFields`.

    Called again, it reconfigures the same handler. `level` sets the root logger's level (left
    as it is when None, except that an unconfigured root, at WARNING, goes to INFO).
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _OWN, False)), None)
    if handler is None:
        if level is None and not root.handlers and root.level == logging.WARNING:
            level = logging.INFO
        handler = logging.StreamHandler(stream or sys.stderr)
        setattr(handler, _OWN, True)
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format, timestamps))
    for old in list(handler.filters):
        handler.removeFilter(old)
    handler.addFilter(RequestFields(reader, deployment, replica))
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
