"""Worker logs: human-readable by default, one JSON object per line when asked
(`<PREFIX>_LOG_FORMAT=json`).

Every JSON line carries the service, and inside a request its id and tenant (set by the
request pipeline with `log_context`) and the current span's trace and span ids, so a log
search and a trace backend meet on `trace_id`. Messages and tracebacks pass through
`redact` in both formats: a message may quote an upstream's error text.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

from ferryman_runtime.redaction import redact

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_request: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "ferryman_log_request", default=(None, None)
)
"""The request being handled in this task: (request id, tenant)."""


@contextmanager
def log_context(request_id: str | None, tenant: str | None) -> Generator[None, None, None]:
    """Within the block, log lines name this request and tenant."""
    token = _request.set((request_id, tenant))
    try:
        yield
    finally:
        _request.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: `time`, `level`, `logger`, `message`, `service`,
    `request_id`, `tenant`, `trace_id`, `span_id` (null when unknown), and `exception`
    when there is one.

    Args:
        service: the worker's name.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Return `record` as one line of JSON."""
        request_id, tenant = _request.get()
        span = trace.get_current_span().get_span_context()
        created = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, str | None] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "service": self._service,
            "request_id": request_id,
            "tenant": tenant,
            "trace_id": f"{span.trace_id:032x}" if span.is_valid else None,
            "span_id": f"{span.span_id:016x}" if span.is_valid else None,
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """The human-readable format, with credentials redacted from the whole line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """Return the formatted line, redacted."""
        return redact(super().format(record))


def configure_logging(level: str, log_format: LogFormat, *, service: str) -> None:
    """Send the root logger's records to stderr at `level` in `log_format` (once per process:
    like `logging.basicConfig`, nothing changes when the root logger has handlers already).

    Raises:
        ValueError: `level` is not a logging level name.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else RedactingFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
