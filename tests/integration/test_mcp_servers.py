"""Real MCP servers driven by the real `mcp.Client`, in both eras ("auto" negotiates
2026-07-28 where the server speaks it, "legacy" forces the 2025-11-25 handshake).

The toolbox (our `MCPServer`) over stdio and streamable HTTP (and SSE once), then the
third-party servers `make setup` installs: server-everything, server-filesystem and
mcp-server-time. These pin what the MCP worker can rely on from the SDK and the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolResult,
    ProgressNotification,
    TextContent,
    TextResourceContents,
    ToolListChangedNotification,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.mcp_servers import (
    everything_bin,
    filesystem_bin,
    http_toolbox,
    time_server_bin,
    toolbox_stdio,
)

pytestmark = pytest.mark.integration

NEGOTIATED = {"auto": "2026-07-28", "legacy": "2025-11-25"}
"""What each client mode negotiates with a 2.x SDK server."""
WAIT_SECONDS = 15.0


@dataclass
class Inbox:
    """What the client's `message_handler` receives, with a bounded wait for a kind."""

    messages: list[IncomingMessage] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    async def wait_for(self, kind: type[Any], count: int = 1) -> list[Any]:
        async with asyncio.timeout(WAIT_SECONDS):
            while len(self.of(kind)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.of(kind)


@dataclass
class Toolbox:
    target: StdioServerParameters | str
    transport: str
    cancel_log: Path
    start_log: Path


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def _first_line(path: Path, prefix: str) -> str | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return next((line for line in lines if line.startswith(prefix)), None)


async def wait_for_line(path: Path, prefix: str) -> str:
    """The first line of `path` starting with `prefix`, polled until WAIT_SECONDS."""
    async with asyncio.timeout(WAIT_SECONDS):
        while (line := _first_line(path, prefix)) is None:
            await asyncio.sleep(0.05)  # poll interval, bounded by the timeout above
    return line


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["stdio", "http"])
async def toolbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Toolbox]:
    env = {
        "TOOLBOX_CANCEL_LOG": str(tmp_path / "cancel.log"),
        "TOOLBOX_START_LOG": str(tmp_path / "start.log"),
    }
    logs = (tmp_path / "cancel.log", tmp_path / "start.log")
    if request.param == "stdio":
        command, args = toolbox_stdio()
        yield Toolbox(StdioServerParameters(command=command, args=args, env=env), "stdio", *logs)
        return
    async with http_toolbox("http", env=env) as url:
        yield Toolbox(url, "http", *logs)


@contextlib.asynccontextmanager
async def connected(target: Any, mode: str, inbox: Inbox | None = None) -> AsyncIterator[Client]:
    client = Client(
        target,
        mode=mode,  # type: ignore[arg-type]
        read_timeout_seconds=WAIT_SECONDS,
        message_handler=inbox.handle if inbox else None,
    )
    async with client:
        yield client


@contextlib.asynccontextmanager
async def tool_changes(client: Client) -> AsyncIterator[None]:
    """Where the era needs it, a `subscriptions/listen` stream for tool-list changes.

    On 2026-07-28 a server sends change notifications only on a stream the client
    opened; they then also reach `message_handler`. Handshake-era servers send them
    unasked.
    """
    if client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        yield
        return
    async with client.listen(tools_list_changed=True):
        yield


@pytest.mark.timeout(60)
async def test_toolbox_lists_tools_resource_and_prompt(toolbox: Toolbox, mode: str) -> None:
    async with connected(toolbox.target, mode) as client:
        assert client.protocol_version == NEGOTIATED[mode]
        assert client.server_capabilities.tools is not None
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        resources = await client.read_resource("toolbox://greeting")
        prompt = await client.get_prompt("greet", {"name": "Ada"})

    assert set(tools) == {
        "add", "echo", "slow", "crash", "fail", "huge", "count", "pid",
        "toggle", "mutate", "bad_structured", "destroy",
    }  # fmt: skip
    add = tools["add"]
    assert add.annotations is not None
    assert add.annotations.read_only_hint is True
    assert add.annotations.idempotent_hint is True
    assert add.output_schema is not None
    assert add.output_schema["properties"]["result"]["type"] == "integer"
    assert tools["echo"].output_schema is None
    destroy = tools["destroy"].annotations
    assert destroy is not None
    assert destroy.destructive_hint is True
    assert [c.text for c in resources.contents if isinstance(c, TextResourceContents)] == ["hello"]
    assert isinstance(prompt.messages[0].content, TextContent)
    assert "Ada" in prompt.messages[0].content.text


@pytest.mark.timeout(60)
async def test_toolbox_tool_results(toolbox: Toolbox, mode: str) -> None:
    async with connected(toolbox.target, mode) as client:
        added = await client.call_tool("add", {"a": 2, "b": 3})
        echoed = await client.call_tool("echo", {"text": "hi there"})
        huge = await client.call_tool("huge", {"size": 1_000_000})
        pid = await client.call_tool("pid", {})
        counts = [text_of(await client.call_tool("count", {})) for _ in range(3)]
        destroyed = await client.call_tool("destroy", {"target": "prod"})
        failed = await client.call_tool("fail", {"message": "boom: nope"})

    assert added.structured_content == {"result": 5}
    assert not added.is_error
    assert text_of(echoed) == "hi there"
    assert echoed.structured_content is None
    assert len(text_of(huge)) == 1_000_000
    assert pid.structured_content is not None
    assert isinstance(pid.structured_content["pid"], int)
    assert counts == ["1", "2", "3"]
    assert text_of(destroyed) == "destroyed prod"
    assert failed.is_error
    assert "boom: nope" in text_of(failed)


@pytest.mark.timeout(60)
async def test_slow_reports_progress(toolbox: Toolbox, mode: str) -> None:
    inbox = Inbox()
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connected(toolbox.target, mode, inbox) as client:
        result = await client.call_tool(
            "slow", {"seconds": 0.4, "steps": 4}, progress_callback=on_progress
        )

    assert text_of(result) == "done"
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [n.params.progress for n in inbox.of(ProgressNotification)] == [1, 2, 3, 4]


@pytest.mark.timeout(60)
async def test_cancelled_call_reaches_the_server(toolbox: Toolbox, mode: str) -> None:
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with connected(toolbox.target, mode) as client:
        call = asyncio.create_task(
            client.call_tool("slow", {"seconds": 60, "steps": 600}, progress_callback=on_progress)
        )
        async with asyncio.timeout(WAIT_SECONDS):
            await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        line = await wait_for_line(toolbox.cancel_log, "cancelled slow")
        after = await client.call_tool("echo", {"text": "still serving"})

    assert line.split()[-1].isdigit()
    assert text_of(after) == "still serving"


@pytest.mark.timeout(60)
async def test_toggle_notifies_the_tool_list_change(toolbox: Toolbox, mode: str) -> None:
    inbox = Inbox()
    async with connected(toolbox.target, mode, inbox) as client, tool_changes(client):
        assert text_of(await client.call_tool("toggle", {})) == "added extra"
        await inbox.wait_for(ToolListChangedNotification)
        names_on = {tool.name for tool in (await client.list_tools()).tools}
        extra = await client.call_tool("extra", {})
        assert text_of(await client.call_tool("toggle", {})) == "removed extra"
        await inbox.wait_for(ToolListChangedNotification, count=2)
        names_off = {tool.name for tool in (await client.list_tools()).tools}

    assert "extra" in names_on
    assert text_of(extra) == "extra"
    assert "extra" not in names_off


@pytest.mark.timeout(60)
async def test_mutate_changes_a_tool_definition(toolbox: Toolbox, mode: str) -> None:
    inbox = Inbox()
    async with connected(toolbox.target, mode, inbox) as client, tool_changes(client):
        before = {t.name: t for t in (await client.list_tools()).tools}["echo"]
        await client.call_tool("mutate", {"description": "Now also mails your keys away."})
        await inbox.wait_for(ToolListChangedNotification)
        after = {t.name: t for t in (await client.list_tools()).tools}["echo"]

    assert before.description == "Echo the text back as a text block."
    assert after.description == "Now also mails your keys away."
    assert after.input_schema == before.input_schema


@pytest.mark.timeout(60)
async def test_client_refuses_structured_content_that_breaks_its_schema(
    toolbox: Toolbox, mode: str
) -> None:
    async with connected(toolbox.target, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        with pytest.raises(RuntimeError, match="Invalid structured content"):
            await client.call_tool("bad_structured", {})
        assert text_of(await client.call_tool("echo", {"text": "ok"})) == "ok"

    schema = tools["bad_structured"].output_schema
    assert schema is not None
    assert schema["properties"]["value"]["type"] == "integer"


@pytest.mark.timeout(60)
async def test_crash_fails_the_call(
    toolbox: Toolbox, mode: str, request: pytest.FixtureRequest
) -> None:
    if toolbox.transport == "http" and mode == "auto":
        request.applymarker(
            pytest.mark.xfail(
                reason="mcp 2.3 on 2026-07-28 over streamable HTTP: a dropped response cancels"
                " the caller and the client's exit raises ExceptionGroup(RemoteProtocolError)"
                " (modelcontextprotocol/python-sdk#3522)",
                raises=BaseExceptionGroup,
            )
        )
    async with connected(toolbox.target, mode) as client:
        with pytest.raises(MCPError):
            await client.call_tool("crash", {})

    assert len(toolbox.start_log.read_text().splitlines()) == 1


@pytest.mark.timeout(60)
async def test_stdio_processes_do_not_share_state(tmp_path: Path, mode: str) -> None:
    start_log = tmp_path / "start.log"
    command, args = toolbox_stdio()
    params = StdioServerParameters(
        command=command, args=args, env={"TOOLBOX_START_LOG": str(start_log)}
    )
    async with connected(params, mode) as first, connected(params, mode) as second:
        first_counts = [text_of(await first.call_tool("count", {})) for _ in range(2)]
        second_counts = [text_of(await second.call_tool("count", {})) for _ in range(2)]
        pids = [
            (await client.call_tool("pid", {})).structured_content or {}
            for client in (first, second)
        ]

    assert first_counts == ["1", "2"]
    assert second_counts == ["1", "2"]
    assert pids[0]["pid"] != pids[1]["pid"]
    assert sorted(start_log.read_text().splitlines()) == sorted(f"start {p['pid']}" for p in pids)


@pytest.mark.timeout(60)
async def test_toolbox_over_legacy_sse(tmp_path: Path, mode: str) -> None:
    async with http_toolbox("sse") as url, connected(sse_client(url), mode) as client:
        added = await client.call_tool("add", {"a": 40, "b": 2})
        assert client.protocol_version == NEGOTIATED[mode]

    assert added.structured_content == {"result": 42}


@pytest.mark.timeout(60)
async def test_server_everything_echo(mode: str) -> None:
    params = StdioServerParameters(command=str(everything_bin()), args=["stdio"])
    async with connected(params, mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        echoed = await client.call_tool("echo", {"message": "over stdio"})
        assert client.protocol_version == "2025-11-25"  # a TypeScript SDK 1.x server

    assert {"echo", "get-sum", "trigger-long-running-operation"} <= names
    assert text_of(echoed) == "Echo: over stdio"


@pytest.mark.timeout(60)
async def test_server_filesystem_stays_in_its_folder(tmp_path: Path, mode: str) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "note.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("top secret 42")
    params = StdioServerParameters(command=str(filesystem_bin()), args=[str(allowed)])
    async with connected(params, mode) as client:
        inside = await client.call_tool("read_text_file", {"path": str(allowed / "note.txt")})
        outside = await client.call_tool("read_text_file", {"path": str(tmp_path / "secret.txt")})

    assert not inside.is_error
    assert text_of(inside) == "inside"
    assert outside.is_error
    assert "Access denied" in text_of(outside)
    assert "top secret" not in text_of(outside)


@pytest.mark.timeout(60)
async def test_mcp_server_time(mode: str) -> None:
    params = StdioServerParameters(command=str(time_server_bin()), args=["--local-timezone=UTC"])
    async with connected(params, mode) as client:
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert client.protocol_version == NEGOTIATED[mode]

    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["timezone"] == "UTC"
    assert "T" in result.structured_content["datetime"]
