"""The MCP contract: requests validated before any work, replies carrying what MCP returned."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.contracts.mcp import (
    MCP_CANCEL_REQUESTED,
    MCP_TOOL_CALL_REQUESTED,
    CancelRequest,
    CatalogListCompleted,
    ServerEntry,
    ToolCallCompleted,
    ToolCallRequest,
    ToolEntry,
)
from ferryman.contracts.registry import LLM, MCP

HASH = "ab" * 32


def test_a_tool_call_request_carries_its_arguments_as_json() -> None:
    request = ToolCallRequest.model_validate(
        {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}
    )

    assert (request.server, request.tool, request.arguments) == (
        "time",
        "get_current_time",
        {"timezone": "UTC"},
    )
    assert (request.progress, request.use_cache, request.timeout) == (True, True, None)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"server": "../etc", "tool": "t"}, "server"),
        ({"server": "s", "tool": "a b"}, "tool"),
        ({"server": "s", "tool": "t", "timeout": 0}, "timeout"),
        ({"server": "s", "tool": "t", "argumnets": {}}, "argumnets"),
        ({"server": "s", "tool": "t", "arguments": []}, "arguments"),
    ],
)
def test_bad_tool_calls_are_refused_naming_the_field(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ToolCallRequest.model_validate(data)

    assert problem in str(refused.value)


def test_a_tools_own_error_is_a_completed_with_is_error_and_unknown_blocks_pass_through() -> None:
    completed = ToolCallCompleted.model_validate(
        {
            "server": "everything",
            "tool": "echo",
            "content": [{"type": "text", "text": "no"}, {"type": "hologram", "frames": 3}],
            "is_error": True,
            "protocol_version": "2026-07-28",
            "definition_hash": HASH,
            "duration_ms": 12.5,
        }
    )

    assert completed.is_error is True
    assert completed.content[1] == {"type": "hologram", "frames": 3}
    assert completed.cached is False


def test_a_definition_hash_must_be_a_sha256() -> None:
    with pytest.raises(ValidationError, match="definition_hash"):
        ToolEntry.model_validate({"name": "t", "definition_hash": "not-a-hash"})


def test_a_catalog_lists_servers_with_their_tools() -> None:
    catalog = CatalogListCompleted(
        servers=[
            ServerEntry(
                server="time",
                transport="stdio",
                protocol_version="2025-06-18",
                tools=[ToolEntry(name="get_current_time", definition_hash=HASH)],
            )
        ],
        catalog_version="v1",
    )

    assert catalog.servers[0].tools[0].state == "available"


def test_a_cancel_names_the_request_it_cancels() -> None:
    with pytest.raises(ValidationError):
        CancelRequest.model_validate({"request_id": "r1"})

    cancel = CancelRequest(request_id="r1", source="/producer")
    assert cancel.reason is None


def test_the_mcp_domain_describes_its_channels_and_control_topic() -> None:
    document = build_asyncapi(domains=[LLM, MCP])
    addresses = {c["address"] for c in document["channels"].values()}
    titles = {m["title"] for m in document["components"]["messages"].values()}

    assert {"mcp.requests", "mcp.results", "mcp.requests.dlq", "mcp.control"} <= addresses
    assert {MCP_TOOL_CALL_REQUESTED, MCP_CANCEL_REQUESTED} <= titles
    assert document["operations"]["consumeMcpControl"]["action"] == "receive"
    assert "ToolCallCompleted" in document["components"]["schemas"]


def test_the_published_document_describes_the_mcp_worker_topics() -> None:
    addresses = {c["address"] for c in build_asyncapi()["channels"].values()}

    assert {"mcp.requests", "mcp.control", "mcp.catalog", "mcp.audit"} <= addresses


def test_access_rules_deny_wins_and_allow_lists_restrict() -> None:
    from ferryman.contracts.mcp import AccessRule, tenant_may_use

    access = {
        "acme": AccessRule(allow=["time/*", "fs/read_*"], deny=["fs/read_secret"]),
        "*": AccessRule(deny=["admin/*"]),
    }

    assert tenant_may_use("acme", "time", "now", ["*"], access)
    assert tenant_may_use("acme", "fs", "read_file", ["*"], access)
    assert not tenant_may_use("acme", "fs", "read_secret", ["*"], access)
    assert not tenant_may_use("acme", "fs", "write_file", ["*"], access)
    assert not tenant_may_use("acme", "admin", None, ["*"], access)
    assert not tenant_may_use("acme", "mail", None, ["*"], access)
    assert tenant_may_use("acme", "fs", None, ["*"], access)
    assert tenant_may_use("other", "mail", "send", ["*"], access)
    assert not tenant_may_use("other", "mail", "send", ["acme"], access)
    assert not tenant_may_use(None, "mail", "send", ["acme"], access)
    assert tenant_may_use(None, "mail", "send", ["*"], {})
