"""Which MCP tools a chat request offers its model, under which function names.

The model sees each MCP tool as a plain function named `<server>__<tool>`; the offer
remembers which server and tool each name stands for, whether the tool may run without
the producer's confirmation, and whether it is idempotent (may be run again after a crash).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import FunctionDefinition, NamedToolChoice, Tool
from ferryman.contracts.mcp import CatalogRecord, ToolEntry

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 64


class ToolCatalog(Protocol):
    """The catalog as the loop reads it (the kit's `CatalogView`)."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the catalog was read up to date."""
        ...

    def tools_for(
        self, tenant: str | None, server: str, patterns: Sequence[str]
    ) -> list[ToolEntry]:
        """The tools of `server` matching `patterns` that `tenant` may use."""
        ...

    def record(self, server: str) -> CatalogRecord | None:
        """The server's latest record (None: unknown)."""
        ...

    async def sync(self, timeout: float) -> None:
        """Return once every record published before the call was read.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        ...


@dataclass(frozen=True)
class OfferedMcpTool:
    """An MCP tool as the model sees it."""

    function: str
    server: str
    tool: str
    entry: ToolEntry
    auto: bool
    """Runs without the producer's confirmation."""

    @property
    def idempotent(self) -> bool:
        """Whether running it twice does no more than running it once (read-only or said so)."""
        hints = self.entry.annotations
        return bool(hints.idempotent or hints.read_only)


def function_name(server: str, tool: str) -> str:
    """The function name the model sees for `tool` on `server`: `server__tool`, made of
    `A-Za-z0-9_-`, at most 64 characters (a longer one ends in a hash of the full name)."""
    name = _UNSAFE.sub("_", f"{server}__{tool}")
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}_{digest}"


class ToolOffer:
    """The MCP tools of one request, resolved from the catalog for its tenant.

    Args:
        request: the chat request (its `tools` may hold `McpToolset`s).
        tenant: the request's tenant (the catalog's access rules apply to it).
        catalog: where tool definitions come from.

    Raises:
        FerrymanError: `invalid_request` when a named server offers the tenant no tool, or a
            function name is taken twice.
    """

    def __init__(self, request: ChatRequest, tenant: str | None, catalog: ToolCatalog) -> None:
        execution = request.tool_execution
        approve = execution.auto_approve if execution is not None else None
        runs = request.runs_tools()
        self.by_function: dict[str, OfferedMcpTool] = {}
        taken = {tool.function.name for tool in request.function_tools()}
        self._plain = frozenset(taken)
        for toolset in request.mcp_toolsets():
            entries = catalog.tools_for(tenant, toolset.server, toolset.tools)
            if not entries:
                # Said the same way whether the server is unknown or hidden from the tenant:
                # the answer must not reveal what other tenants can use.
                raise FerrymanError(
                    ErrorCode.INVALID_REQUEST,
                    f"MCP server {toolset.server!r} offers no tool matching {toolset.tools}"
                    " to this tenant (unknown server, no access, or it could not be listed)",
                    retryable=False,
                )
            for entry in entries:
                name = function_name(toolset.server, entry.name)
                if name in taken:
                    raise FerrymanError(
                        ErrorCode.INVALID_REQUEST,
                        f"function name {name!r} of MCP tool {toolset.server}/{entry.name}"
                        " is taken by another tool of the request",
                        retryable=False,
                    )
                taken.add(name)
                target = f"{toolset.server}/{entry.name}"
                auto = runs and (
                    approve is None or any(fnmatch.fnmatchcase(target, p) for p in approve)
                )
                self.by_function[name] = OfferedMcpTool(
                    name, toolset.server, entry.name, entry, auto
                )

    def functions(self) -> list[Tool]:
        """The MCP tools as function definitions, in catalog order."""
        return [
            Tool(
                type="function",
                function=FunctionDefinition(
                    name=offered.function,
                    description=offered.entry.description,
                    parameters=offered.entry.input_schema or {"type": "object", "properties": {}},
                ),
            )
            for offered in self.by_function.values()
        ]

    def provider_request(self, request: ChatRequest) -> ChatRequest:
        """`request` as a provider sees it: plain functions only, no tool execution.

        Raises:
            FerrymanError: `invalid_request` when a named `tool_choice` names no offered function.
        """
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice) and not self.knows(choice.function.name):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"tool_choice names {choice.function.name!r}, which is not offered to this tenant",
                retryable=False,
            )
        tools = [*request.function_tools(), *self.functions()]
        return request.model_copy(update={"tools": tools or None, "tool_execution": None})

    def knows(self, name: str) -> bool:
        """Whether `name` is a function the request offered (an MCP tool or a plain one)."""
        return name in self.by_function or name in self._plain

    def runnable(self, name: str) -> OfferedMcpTool | None:
        """The MCP tool behind function `name` if the worker runs it, else None."""
        offered = self.by_function.get(name)
        return offered if offered is not None and offered.auto else None
