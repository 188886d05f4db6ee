"""One MCP session: a transport, the SDK's `ClientSession` and its protocol negotiation,
held open by one task (anyio contexts must be entered and left in the same task).

The session notices when its transport ends (a stdio server that died, an HTTP stream that
closed) the moment it happens, not at the next call: `closed` is set and every caller waiting
on it gets `unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client import ClientSession, IncomingMessage
from mcp.client._probe import negotiate_auto  # the SDK's own "auto" policy (mcp.Client uses it)
from mcp.client.subscriptions import (
    ListenNotSupportedError,
    PromptsListChanged,
    ResourcesListChanged,
    SubscriptionLost,
    ToolsListChanged,
    listen,
)
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry.propagate import inject

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.redaction import redact
from mcp_worker.servers.errors import map_mcp_error
from mcp_worker.servers.stderr_log import StderrTail

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")
ItemT = TypeVar("ItemT")

Streams = tuple[Any, Any]
TransportFactory = Callable[[], AbstractAsyncContextManager[Streams]]
"""Opens a transport (`stdio_client(...)`, `streamable_http_client(...)`, `sse_client(...)`)."""


@dataclass(frozen=True)
class Connector:
    """How to open a server's transport, and (stdio) where its stderr is collected."""

    open: TransportFactory
    stderr: StderrTail | None = None
    secrets: tuple[str, ...] = ()
    """The server's resolved credentials: redacted from every error text."""


NotificationKind = Literal["tools", "resources", "prompts"]

_PAGE_CAP = 100
"""A server whose listing never ends cannot hang discovery."""


class _WorkerValidatedSession(ClientSession):
    """The SDK validates `structuredContent` against `outputSchema` and raises on a mismatch,
    losing the result; the worker applies each server's own policy (off, warn, strict)."""

    async def validate_tool_result(self, name: str, result: types.CallToolResult) -> None:
        return None


class McpSession:
    """A connected MCP session on one server.

    Args:
        server: the server's registry name (errors and logs).
        connector: opens the transport (and collects a stdio server's stderr).
        mode: `auto` negotiates the newest revision both speak; `legacy` the handshake.
        on_list_changed: called with `tools`, `resources` or `prompts` when the server says
            that list changed.
    """

    def __init__(
        self,
        server: str,
        connector: Connector,
        *,
        mode: Literal["auto", "legacy"] = "auto",
        on_list_changed: Callable[[NotificationKind], None] | None = None,
    ) -> None:
        self.server = server
        self._transport = connector.open
        self._stderr = connector.stderr
        self._secrets = connector.secrets
        self._mode = mode
        self._on_list_changed = on_list_changed
        self._session: ClientSession | None = None
        self._ready = asyncio.Event()
        self._ending = asyncio.Event()
        self.closed = asyncio.Event()
        """Set when the transport ended, for whatever reason."""
        self.failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def protocol_version(self) -> str:
        """The negotiated MCP revision."""
        return str(self._live().protocol_version)

    @property
    def server_version(self) -> str | None:
        """The server's self-reported version, if it reported one."""
        info = self._live().server_info
        return info.version if info is not None else None

    @property
    def capabilities(self) -> types.ServerCapabilities | None:
        """What the server offers (tools, resources, prompts)."""
        return self._live().server_capabilities

    def why(self) -> str:
        """Why the session ended or failed, with the server's last stderr lines."""
        reason = redact(_reason(self.failure), self._secrets)
        lines = self._stderr.last()[-3:] if self._stderr is not None else []
        return f"{reason}; stderr: {' | '.join(lines)}"[:800] if lines else reason

    @property
    def alive(self) -> bool:
        """Connected, and the transport has not ended."""
        return self._session is not None and not self.closed.is_set()

    async def open(self, timeout: float) -> None:
        """Start the transport and negotiate, within `timeout` seconds.

        Raises:
            FerrymanError: `unavailable` (it could not start or closed during the handshake)
                or `timeout`.
        """
        self._task = asyncio.create_task(self._hold(), name=f"mcp-session-{self.server}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            # The caller was cancelled: the half-open session (and its process) must not
            # outlive it.
            await self.close()
            raise
        finally:
            ready.cancel()
        if self._ready.is_set() and not self.closed.is_set():
            return
        await self.close()
        if not done:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"MCP server {self.server!r} did not complete the handshake in {timeout:g} s",
                upstream=self.server,
            )
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"MCP server {self.server!r} could not be started or reached: {self.why()}",
            upstream=self.server,
        )

    async def close(self) -> None:
        """End the session and its transport (a stdio server's process tree is terminated)."""
        self._ending.set()
        if self._task is not None:
            # Before the handshake ended nothing waits on `_ending`: cancel at once.
            grace = 15.0 if self._ready.is_set() else 0.0
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self.closed.set()

    async def _hold(self) -> None:
        try:
            async with self._transport() as (read, write):
                relay_send, relay_receive = anyio.create_memory_object_stream[Any](16)
                async with anyio.create_task_group() as group:
                    group.start_soon(self._relay, read, relay_send)
                    dispatcher = JSONRPCDispatcher(relay_receive, write)
                    session = _WorkerValidatedSession(
                        dispatcher=dispatcher, message_handler=self._on_message
                    )
                    async with session:
                        if self._mode == "legacy":
                            await session.initialize()
                        else:
                            await negotiate_auto(session)
                        self._session = session
                        if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
                            group.start_soon(self._listen, session)
                        self._ready.set()
                        await self._ending.wait()
                    group.cancel_scope.cancel()
        except Exception as exc:  # the transport's or the handshake's failure, kept as health
            self.failure = exc
            logger.debug("MCP session %s ended", self.server, exc_info=True)
        finally:
            self.closed.set()
            self._ending.set()

    async def _relay(
        self,
        read: MemoryObjectReceiveStream[Any],
        relay: MemoryObjectSendStream[Any],
    ) -> None:
        """Pass messages to the dispatcher; on end of stream, close the session at once."""
        async with relay:
            try:
                async for message in read:
                    await relay.send(message)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass
        if not self._ending.is_set():
            logger.warning("MCP server %s closed its connection", self.server)
            self.failure = self.failure or ConnectionError("the server closed the connection")
        self.closed.set()
        self._ending.set()

    async def _listen(self, session: ClientSession) -> None:
        """2026-07-28 servers send list changes only on a `subscriptions/listen` stream."""
        if self._on_list_changed is None:
            return
        try:
            async with listen(
                session,
                tools_list_changed=True,
                prompts_list_changed=True,
                resources_list_changed=True,
            ) as subscription:
                async for event in subscription:
                    if isinstance(event, ToolsListChanged):
                        self._on_list_changed("tools")
                    elif isinstance(event, ResourcesListChanged):
                        self._on_list_changed("resources")
                    elif isinstance(event, PromptsListChanged):
                        self._on_list_changed("prompts")
        except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as exc:
            # A server without change notifications: the health probe's listing still
            # refreshes nothing, but calls work; say so once.
            logger.info("MCP server %s: no change subscription (%s)", self.server, exc)

    async def _on_message(self, message: IncomingMessage) -> None:
        if self._on_list_changed is None:
            return
        if isinstance(message, types.ToolListChangedNotification):
            self._on_list_changed("tools")
        elif isinstance(message, types.ResourceListChangedNotification):
            self._on_list_changed("resources")
        elif isinstance(message, types.PromptListChangedNotification):
            self._on_list_changed("prompts")

    def _live(self) -> ClientSession:
        if self._session is None or self.closed.is_set():
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"MCP server {self.server!r} is not connected",
                upstream=self.server,
            )
        return self._session

    async def _request(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one request; a transport that ends meanwhile fails it `unavailable` at once."""
        session_closed = asyncio.create_task(self.closed.wait())
        work = asyncio.ensure_future(call())
        try:
            await asyncio.wait({work, session_closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()  # the SDK sends `notifications/cancelled` for the abandoned request
            await asyncio.gather(work, return_exceptions=True)
            raise
        finally:
            session_closed.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"MCP server {self.server!r} closed the connection during the request",
                upstream=self.server,
            )
        if work.cancelled():  # the SDK cancels a caller whose HTTP response was dropped
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                f"MCP server {self.server!r} dropped the request",
                upstream=self.server,
            )
        try:
            return work.result()
        except Exception as exc:
            raise map_mcp_error(exc, self.server, self._secrets) from None

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        progress: ProgressFnT | None = None,
        use_cache: bool = True,
    ) -> types.CallToolResult:
        """Call a tool (the server's own `isError` comes back as a result; `use_cache` is
        for sessions that cache, and an MCP session does not).

        Raises:
            FerrymanError: the transport failed (`unavailable`), the call timed out
                (`timeout`; the server is told to cancel) or the server refused it.
        """
        session = self._live()
        # The caller's trace context (its `execute_tool` span), where the MCP spec puts it.
        meta: dict[str, Any] = {}
        inject(meta)
        result = await self._request(
            lambda: session.call_tool(
                name,
                arguments,
                read_timeout_seconds=timeout,
                progress_callback=progress,
                meta=cast(types.RequestParamsMeta, meta) if meta else None,
            )
        )
        if not isinstance(result, types.CallToolResult):
            raise FerrymanError(
                ErrorCode.INVALID_REQUEST,
                f"tool {name!r} on {self.server!r} asked for input the worker cannot give",
                upstream=self.server,
            )
        return result

    async def list_tools(self, timeout: float) -> list[types.Tool]:
        """Every tool the server lists (all pages).

        Raises:
            FerrymanError: the listing failed.
        """
        session = self._live()
        return await self._all_pages(
            lambda cursor: session.list_tools(params=_page(cursor)),
            lambda page: page.tools,
            timeout,
        )

    async def list_resources(self, timeout: float) -> list[types.Resource]:
        """The server's resources, all pages (empty when it offers none).

        Raises:
            FerrymanError: the listing failed.
        """
        session = self._live()
        caps = self.capabilities
        if caps is None or caps.resources is None:
            return []
        return await self._all_pages(
            lambda cursor: session.list_resources(params=_page(cursor)),
            lambda page: page.resources,
            timeout,
        )

    async def list_prompts(self, timeout: float) -> list[types.Prompt]:
        """The server's prompts, all pages (empty when it offers none).

        Raises:
            FerrymanError: the listing failed.
        """
        session = self._live()
        caps = self.capabilities
        if caps is None or caps.prompts is None:
            return []
        return await self._all_pages(
            lambda cursor: session.list_prompts(params=_page(cursor)),
            lambda page: page.prompts,
            timeout,
        )

    async def _all_pages(
        self,
        fetch: Callable[[str | None], Awaitable[P]],
        items: Callable[[P], Sequence[ItemT]],
        timeout: float,
    ) -> list[ItemT]:
        """Follow `next_cursor` (at most `_PAGE_CAP` pages, each within `timeout`)."""
        collected: list[ItemT] = []
        cursor: str | None = None
        for _ in range(_PAGE_CAP):
            page = await self._timed(fetch(cursor), timeout)
            collected.extend(items(page))
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                break
        return collected

    async def read_resource(self, uri: str, timeout: float) -> types.ReadResourceResult:
        """Read one resource.

        Raises:
            FerrymanError: the read failed.
        """
        session = self._live()
        return await self._timed(session.read_resource(uri), timeout)

    async def get_prompt(
        self, name: str, arguments: dict[str, str], timeout: float
    ) -> types.GetPromptResult:
        """Get one prompt.

        Raises:
            FerrymanError: the request failed.
        """
        session = self._live()
        return await self._timed(session.get_prompt(name, arguments), timeout)

    async def _timed(self, call: Awaitable[T], timeout: float) -> T:
        async def bounded() -> T:
            with anyio.fail_after(timeout):
                return await call

        return await self._request(bounded)


def _page(cursor: str | None) -> types.PaginatedRequestParams | None:
    return types.PaginatedRequestParams(cursor=cursor) if cursor else None


def _reason(failure: BaseException | None) -> str:
    if failure is None:
        return "it closed the connection"
    if isinstance(failure, BaseExceptionGroup):
        inner: list[BaseException] = list(failure.exceptions)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        return "; ".join(_reason(e) for e in inner[:3])
    text = str(failure).strip().splitlines()[0][:200] if str(failure).strip() else ""
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__
