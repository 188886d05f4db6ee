"""MCP and transport failures mapped to the shared error taxonomy (the adapter edge)."""

from __future__ import annotations

from collections.abc import Sequence

import mcp_types as types
from mcp.shared.exceptions import MCPError

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.redaction import redact


def map_mcp_error(exc: BaseException, server: str, secrets: Sequence[str] = ()) -> FerrymanError:
    """The taxonomy's view of a failed MCP request (messages redacted and bounded).

    A closed connection or an unreachable server is `unavailable` and a timeout is `timeout`
    (both retryable); the server refusing the request is final.
    """
    if isinstance(exc, FerrymanError):
        return exc
    if isinstance(exc, MCPError):
        code = exc.code
        text = redact(str(exc.error.message), secrets)[:500]
        if code == types.CONNECTION_CLOSED:
            return FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"MCP server {server!r} closed the connection",
                upstream=server,
            )
        if code == types.REQUEST_TIMEOUT:
            return FerrymanError(
                ErrorCode.TIMEOUT, f"MCP server {server!r} did not answer in time", upstream=server
            )
        if code == types.INVALID_PARAMS:
            return FerrymanError(ErrorCode.INVALID_REQUEST, f"{server}: {text}", upstream=server)
        if code == types.METHOD_NOT_FOUND:
            return FerrymanError(ErrorCode.NOT_FOUND, f"{server}: {text}", upstream=server)
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"MCP server {server!r} answered with error {code}: {text}",
            retryable=False,
            upstream=server,
        )
    if isinstance(exc, TimeoutError):
        return FerrymanError(
            ErrorCode.TIMEOUT, f"MCP server {server!r} did not answer in time", upstream=server
        )
    if isinstance(exc, (OSError, ConnectionError, EOFError)):
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"MCP server {server!r} could not be reached: {type(exc).__name__}",
            upstream=server,
        )
    return FerrymanError(
        ErrorCode.UNAVAILABLE,
        f"MCP server {server!r} failed: {type(exc).__name__}: {redact(str(exc), secrets)[:300]}",
        retryable=False,
        upstream=server,
    )
