"""What a server's session offers the worker, whatever is behind it: an MCP session
(`McpSession`) or an HTTP API whose operations are tools (`openapi.session.ApiSession`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT

from mcp_worker.servers.session import NotificationKind


class ToolSession(Protocol):
    """A connected session on one server (see `McpSession` for the contract of each call)."""

    closed: asyncio.Event
    failure: BaseException | None

    @property
    def alive(self) -> bool: ...

    @property
    def protocol_version(self) -> str: ...

    def why(self) -> str: ...

    async def open(self, timeout: float) -> None: ...

    async def close(self) -> None: ...

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        progress: ProgressFnT | None = None,
        use_cache: bool = True,
    ) -> types.CallToolResult: ...

    async def list_tools(self, timeout: float) -> list[types.Tool]: ...

    async def list_resources(self, timeout: float) -> list[types.Resource]: ...

    async def list_prompts(self, timeout: float) -> list[types.Prompt]: ...

    async def read_resource(self, uri: str, timeout: float) -> types.ReadResourceResult: ...

    async def get_prompt(
        self, name: str, arguments: dict[str, str], timeout: float
    ) -> types.GetPromptResult: ...


PrepareSession = Callable[[str, Callable[[NotificationKind], None]], Awaitable[ToolSession]]
"""Builds a session that is not open yet, given its scope (a tenant, or `""`) and where its
list changes go (provisioning,
sandboxing and loading an API's document happen here); raises FerrymanError when it cannot."""
