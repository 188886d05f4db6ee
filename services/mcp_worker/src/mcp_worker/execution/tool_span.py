"""The `execute_tool {tool}` span of one tool call attempt (OpenTelemetry GenAI and MCP
semantic conventions).

The span carries the tool's and server's names and how the call ended, never an argument
value or a result. While it is current, the call's W3C trace context goes to the server: in
the request's `params._meta` for an MCP server (`McpSession.call_tool`), as HTTP headers
for an API (`ApiCaller`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ferryman_runtime.telemetry.spans import mark_failed, traced_span
from mcp_worker.registry import ServerConfig

_tracer = trace.get_tracer(__name__)

TOOL_ERROR = "tool_error"
"""`error.type` of a call the tool answered with `isError` (the MCP semantic conventions')."""


@contextmanager
def tool_span(
    server: str, tool: str, config: ServerConfig, tracer: trace.Tracer | None = None
) -> Iterator[Span]:
    """The current span of one attempt to call `tool` on `server` (a no-op span until
    tracing is set up). A failure sets `error.type` (the error code, `cancelled`, or the
    exception's type; `traced_span`) and the error status; the exception's text is left out
    (it may quote the server).

    Args:
        server: the server's registry name.
        tool: the tool's name.
        config: the server's registry entry (its URL, for HTTP servers).
        tracer: where the span goes (default: the global tracer provider's).

    Raises:
        BaseException: whatever the call raised, unchanged.
    """
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "mcp.method.name": "tools/call",
        "ferryman.mcp.server": server,
    }
    address = _http_address(config.url or config.base_url)
    if address is not None:
        attributes["server.address"], attributes["server.port"] = address
    with traced_span(
        tracer or _tracer, f"execute_tool {tool}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def tool_answered(span: Span, *, is_error: bool) -> None:
    """Mark the span of a call the tool answered with its own error (`isError`)."""
    if is_error:
        mark_failed(span, TOOL_ERROR)


def _http_address(url: str | None) -> tuple[str, int] | None:
    """`(host, port)` of an HTTP server's URL (None for stdio servers)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.hostname is None:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)
