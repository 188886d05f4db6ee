"""The mcp_worker end to end: tool calls, resources, prompts and the catalog through the real
Kafka, on the in-repo toolbox server (stdio and streamable HTTP) and real third-party ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_REQUESTED,
    MCP_PROMPT_GET_REQUESTED,
    MCP_RESOURCE_READ_REQUESTED,
)
from tests.integration.mcp_harness import McpHarness, running_mcp_worker
from tests.mcp_servers import toolbox_stdio

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def toolbox_entry(**extra: Any) -> dict[str, Any]:
    command, args = toolbox_stdio()
    return {"command": command, "args": args, "sandbox": "none", **extra}


def write_registry(path: Path, servers: dict[str, Any], **top: Any) -> Path:
    path.write_text(json.dumps({"mcpServers": servers, **top}))
    return path


@pytest.fixture
async def harness(kafka_bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[McpHarness]:
    registry = write_registry(tmp_path / "servers.json", {"toolbox": toolbox_entry()})
    async with running_mcp_worker(kafka_bootstrap, unique, registry) as running:
        yield running


async def test_a_tool_call_streams_progress_then_completed(harness: McpHarness) -> None:
    request_id = await harness.call("toolbox", "slow", {"seconds": 0.4, "steps": 3})

    replies = await harness.replies(request_id)

    kinds = [r.type for r in replies]
    assert kinds[-1] == "ferryman.mcp.tool.call.completed", replies[-1].data
    progress = [r.data for r in replies if r.type == "ferryman.mcp.progress"]
    assert [p["sequence"] for p in progress] == list(range(len(progress)))
    assert len(progress) == 3
    done = replies[-1].data
    assert done["content"] == [{"type": "text", "text": "done"}]
    assert done["is_error"] is False
    assert done["protocol_version"] in ("2026-07-28", "2025-11-25")
    assert len(done["definition_hash"]) == 64
    assert done["cached"] is False


async def test_structured_content_and_a_tools_own_error(harness: McpHarness) -> None:
    added = await harness.result(await harness.call("toolbox", "add", {"a": 2, "b": 3}))
    failed = await harness.result(await harness.call("toolbox", "fail", {"message": "nope"}))

    assert added.data["structured_content"] == {"result": 5}
    assert failed.type == "ferryman.mcp.tool.call.completed"
    assert failed.data["is_error"] is True
    assert "nope" in failed.data["content"][0]["text"]


async def test_bad_arguments_fail_invalid_request_naming_the_field(harness: McpHarness) -> None:
    reply = await harness.result(await harness.call("toolbox", "add", {"a": "two", "b": 3}))

    assert reply.type == "ferryman.mcp.failed"
    assert reply.data["error"]["code"] == "invalid_request"
    assert "a" in reply.data["error"]["message"]
    assert reply.data["error"]["retryable"] is False


async def test_unknown_server_and_tool_are_not_found(harness: McpHarness) -> None:
    no_server = await harness.result(await harness.call("nowhere", "x"))
    no_tool = await harness.result(await harness.call("toolbox", "nothing_here"))

    assert no_server.data["error"]["code"] == "not_found"
    assert no_tool.data["error"]["code"] == "not_found"


async def test_resource_prompt_and_catalog(harness: McpHarness) -> None:
    read = await harness.result(
        await harness.send(
            MCP_RESOURCE_READ_REQUESTED, {"server": "toolbox", "uri": "toolbox://greeting"}
        )
    )
    prompt = await harness.result(
        await harness.send(
            MCP_PROMPT_GET_REQUESTED,
            {"server": "toolbox", "prompt": "greet", "arguments": {"name": "Ada"}},
        )
    )
    catalog = await harness.result(await harness.send(MCP_CATALOG_LIST_REQUESTED, {}))

    assert read.data["contents"][0]["text"] == "hello"
    assert "Ada" in json.dumps(prompt.data["messages"])
    [server] = catalog.data["servers"]
    names = {t["name"] for t in server["tools"]}
    assert {"add", "echo", "slow", "crash", "destroy"} <= names
    add = next(t for t in server["tools"] if t["name"] == "add")
    assert add["annotations"]["read_only"] is True
    assert "read-only" in add["tags"]
    assert server["status"] == "healthy"
