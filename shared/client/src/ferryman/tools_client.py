"""Python client of the mcp_worker: list the tools a tenant may see, call one.

```python
async with McpToolsClient(connection, reply_topic="app-7.mcp.results") as tools:
    catalog = await tools.list_tools(tenant="acme")
    async for event in tools.call_tool_stream("time", "get_current_time", {"timezone": "UTC"}):
        ...  # McpProgress, McpProgress, …, then the ToolCallCompleted
    result = await tools.call_tool("time", "get_current_time", {"timezone": "UTC"})
```

A thin facade over `FerrymanClient.request_stream`: the MCP request types and their
replies are registered in the client's `ReplyRegistry` (`register_mcp`), so reply tokens,
run ids and ordering are handled as for chat. A tool's own error (`is_error`) is a
`ToolCallCompleted`; a `failed` reply raises `McpFailedError` carrying the `ErrorInfo`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

from pydantic import BaseModel

from ferryman.client import FerrymanClient, RequestFailedError
from ferryman.contracts.mcp import (
    DEFAULT_MCP_REPLY_TOPIC,
    DEFAULT_MCP_REQUEST_TOPIC,
    MCP_CATALOG_LIST_COMPLETED,
    MCP_CATALOG_LIST_REQUESTED,
    MCP_FAILED,
    MCP_PROGRESS,
    MCP_PROMPT_GET_COMPLETED,
    MCP_PROMPT_GET_REQUESTED,
    MCP_RESOURCE_READ_COMPLETED,
    MCP_RESOURCE_READ_REQUESTED,
    MCP_TOOL_CALL_COMPLETED,
    MCP_TOOL_CALL_REQUESTED,
    CatalogListCompleted,
    CatalogListRequest,
    McpFailed,
    McpProgress,
    PromptGetCompleted,
    PromptGetRequest,
    ResourceReadCompleted,
    ResourceReadRequest,
    ToolCallCompleted,
    ToolCallRequest,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.replies import (
    ReplyRegistry,
    ReplyRole,
    ReplyType,
    RunRestarted,
    default_registry,
)

__all__ = [
    "REPLY_GRACE_SECONDS",
    "McpFailedError",
    "McpToolsClient",
    "ToolCallEvent",
    "register_mcp",
    "reply_wait",
]

ToolCallEvent = McpProgress | RunRestarted | ToolCallCompleted
"""What `McpToolsClient.call_tool_stream` yields (a `RunRestarted` means the request runs
again: progress shown so far belongs to a run given up)."""

McpFailedError = RequestFailedError
"""Raised when the mcp_worker answers `ferryman.mcp.failed`; `error` is its `ErrorInfo`
(code in the shared taxonomy, `retryable`). The same class as `RequestFailedError`."""

REPLY_GRACE_SECONDS = 30.0
"""How much longer than a call's own `timeout` the client waits for its reply (queueing,
connecting to the server, publishing)."""

_DEFAULT_WAIT = 600.0

_KINDS: tuple[tuple[str, str, type[BaseModel], type[BaseModel]], ...] = (
    (MCP_TOOL_CALL_REQUESTED, MCP_TOOL_CALL_COMPLETED, ToolCallRequest, ToolCallCompleted),
    (
        MCP_RESOURCE_READ_REQUESTED,
        MCP_RESOURCE_READ_COMPLETED,
        ResourceReadRequest,
        ResourceReadCompleted,
    ),
    (MCP_PROMPT_GET_REQUESTED, MCP_PROMPT_GET_COMPLETED, PromptGetRequest, PromptGetCompleted),
    (
        MCP_CATALOG_LIST_REQUESTED,
        MCP_CATALOG_LIST_COMPLETED,
        CatalogListRequest,
        CatalogListCompleted,
    ),
)


def register_mcp(registry: ReplyRegistry) -> ReplyRegistry:
    """Register the four MCP request types (tool call, resource read, prompt get, catalog
    list) in `registry`, each answered by progress, its completed type, or `failed`;
    return `registry`."""
    for request_type, completed_type, request_model, completed_model in _KINDS:
        registry.register(
            request_type,
            {
                MCP_PROGRESS: ReplyType(McpProgress, ReplyRole.PROGRESS),
                completed_type: ReplyType(completed_model, ReplyRole.COMPLETED),
                MCP_FAILED: ReplyType(McpFailed, ReplyRole.FAILED),
            },
            request_model=request_model,
        )
    return registry


class McpToolsClient(FerrymanClient):
    """A `FerrymanClient` for the mcp_worker: MCP topics by default, MCP replies registered.

    Args:
        connection: a `KafkaConnection`, or the bootstrap list of a plaintext cluster.
        request_topic: where requests go (default `mcp.requests`).
        reply_topic: where replies are read (default `mcp.results`).
        registry: a registry to add the MCP types to (default: the chat registry).
        settings: the other `FerrymanClient` settings (`reply_partition`,
            `create_reply_topic`, `source`, `reply_tokens`, `clock`, `metadata_timeout`).
    """

    def __init__(
        self,
        connection: str | KafkaConnection = "127.0.0.1:9092",
        *,
        request_topic: str = DEFAULT_MCP_REQUEST_TOPIC,
        reply_topic: str = DEFAULT_MCP_REPLY_TOPIC,
        registry: ReplyRegistry | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(
            connection,
            request_topic=request_topic,
            reply_topic=reply_topic,
            registry=register_mcp(registry or default_registry()),
            **settings,
        )

    async def __aenter__(self) -> McpToolsClient:
        """Connect and start reading replies (see `FerrymanClient.__aenter__`).

        Raises:
            LookupError: the reply topic does not exist (and was not to be created).
            ValueError: `reply_partition` is not a partition of the reply topic.
            aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
        """
        await super().__aenter__()
        return self

    async def list_tools(
        self,
        servers: Sequence[str] | None = None,
        *,
        include_schemas: bool = True,
        tenant: str | None = None,
        timeout: float = 60.0,
        **options: Any,
    ) -> CatalogListCompleted:
        """Return the catalog of servers and tools `tenant` may see.

        `servers` narrows it to these servers; `timeout` is how long to wait for the reply;
        other options are those of `FerrymanClient.request_stream` (`request_id`,
        `traceparent`, `expires_in`, …).

        Raises:
            McpFailedError: the worker answered `failed` (e.g. `permission_denied`).
            TimeoutError: no reply within `timeout` seconds.
            ValueError: an option is malformed.
            aiokafka.errors.KafkaError: publishing or reading replies failed.
        """
        request = CatalogListRequest(
            servers=None if servers is None else list(servers), include_schemas=include_schemas
        )
        completed = await self.request(
            MCP_CATALOG_LIST_REQUESTED, request, timeout=timeout, tenant=tenant, **options
        )
        return cast(CatalogListCompleted, completed)

    async def call_tool_stream(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
        principal: str | None = None,
        use_cache: bool = True,
        progress: bool = True,
        wait: float | None = None,
        **options: Any,
    ) -> AsyncIterator[ToolCallEvent]:
        """Call `tool` on `server`; yield its progress as it comes, then its `ToolCallCompleted`.

        `timeout` bounds the call on the worker's side (seconds; the server's and tool's
        bounds apply too); `wait` is how long the client waits for the terminal reply
        (default: `timeout` plus `REPLY_GRACE_SECONDS`, or 600 s). `principal` is recorded
        for the audit; `use_cache=False` refuses a cached result; `progress=False` asks for
        no progress events. Other options are those of `FerrymanClient.request_stream`.

        Raises:
            McpFailedError: the worker answered `failed` (unknown tool, arguments not
                matching the tool's schema, server unavailable, timeout, …).
            TimeoutError: no terminal reply within `wait` seconds.
            pydantic.ValidationError: a malformed server or tool name, or `timeout` out of
                range (nothing is published).
            ValueError: an option is malformed.
            aiokafka.errors.KafkaError: publishing or reading replies failed.
        """
        request = _tool_call(server, tool, arguments, progress, timeout, principal, use_cache)
        stream = self.request_stream(
            MCP_TOOL_CALL_REQUESTED,
            request,
            timeout=reply_wait(timeout) if wait is None else wait,
            tenant=tenant,
            **options,
        )
        async for event in stream:
            yield cast(ToolCallEvent, event)

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
        principal: str | None = None,
        use_cache: bool = True,
        wait: float | None = None,
        **options: Any,
    ) -> ToolCallCompleted:
        """Call `tool` on `server` and return its `ToolCallCompleted` (check `is_error`: the
        tool may have answered with an error of its own). Options as `call_tool_stream`.

        Raises:
            McpFailedError: the worker answered `failed`.
            TimeoutError: no terminal reply within `wait` seconds.
            pydantic.ValidationError: a malformed server or tool name, or `timeout` out of
                range (nothing is published).
            ValueError: an option is malformed.
            aiokafka.errors.KafkaError: publishing or reading replies failed.
        """
        request = _tool_call(server, tool, arguments, False, timeout, principal, use_cache)
        completed = await self.request(
            MCP_TOOL_CALL_REQUESTED,
            request,
            timeout=reply_wait(timeout) if wait is None else wait,
            tenant=tenant,
            **options,
        )
        return cast(ToolCallCompleted, completed)


def reply_wait(timeout: float | None) -> float:
    """How long to wait for the reply to a call bounded by `timeout` seconds: `timeout`
    plus `REPLY_GRACE_SECONDS`, or 600 s for a call without a bound of its own."""
    return _DEFAULT_WAIT if timeout is None else timeout + REPLY_GRACE_SECONDS


def _tool_call(
    server: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    progress: bool,
    timeout: float | None,
    principal: str | None,
    use_cache: bool,
) -> ToolCallRequest:
    """The request of a tool call.

    Raises:
        pydantic.ValidationError: a malformed name, or `timeout` out of range.
    """
    return ToolCallRequest(
        server=server,
        tool=tool,
        arguments=dict(arguments or {}),
        progress=progress,
        timeout=timeout,
        principal=principal,
        use_cache=use_cache,
    )
