"""`ferryman tools list|call`: argument parsing, `--args` input, and how results are shown."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ferryman.cli import build_parser, main
from ferryman.cli_mcp_tools import (
    catalog_rows,
    describe_failure,
    describe_progress,
    render_catalog,
    render_tool_result,
    result_footer,
    tool_arguments,
)
from ferryman.contracts import ErrorCode, ErrorInfo
from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_COMPLETED,
    MCP_CATALOG_LIST_REQUESTED,
    MCP_FAILED,
    MCP_PROGRESS,
    MCP_TOOL_CALL_COMPLETED,
    MCP_TOOL_CALL_REQUESTED,
    CatalogListCompleted,
    CatalogListRequest,
    McpFailed,
    McpProgress,
    ServerEntry,
    ToolAnnotations,
    ToolCallCompleted,
    ToolCallRequest,
    ToolEntry,
)
from ferryman.replies import ReplyRole, default_registry
from ferryman.tools_client import REPLY_GRACE_SECONDS, register_mcp, reply_wait

HASH = "a" * 64


def completed(**fields: object) -> ToolCallCompleted:
    values: dict[str, object] = {
        "server": "time",
        "tool": "now",
        "content": [],
        "protocol_version": "2025-11-25",
        "definition_hash": HASH,
        "duration_ms": 12.4,
        **fields,
    }
    return ToolCallCompleted.model_validate(values)


def test_list_options_and_mcp_topic_defaults() -> None:
    parser = build_parser()

    args = parser.parse_args(
        [
            *("tools", "list", "--server", "time", "--server", "git", "--no-schemas", "--json"),
            *("--tenant", "acme", "-b", "k1:9092"),
        ]
    )
    bare = parser.parse_args(["tools", "list"])

    assert args.tools_command == "list"
    assert args.servers == ["time", "git"]
    assert args.no_schemas
    assert args.json
    assert args.tenant == "acme"
    assert args.bootstrap_servers == "k1:9092"
    assert (bare.servers, bare.no_schemas, bare.tenant) == (None, False, None)
    assert (bare.request_topic, bare.reply_topic) == ("mcp.requests", "mcp.results")


def test_call_options() -> None:
    args = build_parser().parse_args(
        [
            *("tools", "call", "time", "get_current_time", "--args", '{"timezone": "UTC"}'),
            *("--timeout", "5", "--principal", "ana", "--no-cache", "--reply-topic", "app.mcp"),
        ]
    )
    bare = build_parser().parse_args(["tools", "call", "time", "now"])

    assert (args.server, args.tool) == ("time", "get_current_time")
    assert args.args == {"timezone": "UTC"}
    assert (args.timeout, args.principal, args.no_cache) == (5.0, "ana", True)
    assert (args.request_topic, args.reply_topic) == ("mcp.requests", "app.mcp")
    assert (bare.args, bare.timeout, bare.no_cache, bare.json) == ({}, None, False, False)


def test_args_come_from_a_file_or_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "args.json"
    path.write_text('{"path": "/tmp", "depth": 2}', encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))

    assert tool_arguments(f"@{path}") == {"path": "/tmp", "depth": 2}
    assert tool_arguments("@-") == {"from": "stdin"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"token": "s3cret"', "not valid JSON: Expecting ',' delimiter at line 1 column 19"),
        ('["s3cret"]', "not a JSON object of the tool's arguments but list"),
        ("@/no/such/args.json", "cannot read /no/such/args.json: No such file or directory"),
    ],
)
def test_bad_args_exit_2_with_a_message_that_does_not_repeat_them(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tools", "call", "fs", "read", "--args", value, "-b", "127.0.0.1:1"])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"argument --args: {message}" in err
    assert "s3cret" not in err


def test_a_bad_name_or_timeout_exits_2_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 1 refuses connections: reaching Kafka would end with exit code 1, not 2.
    code = main(["tools", "call", "../etc", "now", "--timeout", "4000", "-b", "127.0.0.1:1"])

    err = capsys.readouterr().err
    assert code == 2
    assert "server: server name '../etc' must be 1-128 of" in err
    assert "timeout: Input should be less than or equal to 3600" in err


def test_catalog_table_has_a_row_per_tool_with_hints_and_short_descriptions() -> None:
    catalog = CatalogListCompleted(
        catalog_version="v1",
        servers=[
            ServerEntry(
                server="fs",
                transport="stdio",
                protocol_version="2025-11-25",
                tools=[
                    ToolEntry(
                        name="read_file",
                        description="Read a file.\n  Returns its text.",
                        annotations=ToolAnnotations(read_only=True),
                        definition_hash=HASH,
                    ),
                    ToolEntry(
                        name="delete",
                        description="x" * 100,
                        annotations=ToolAnnotations(destructive=True),
                        definition_hash=HASH,
                        state="quarantined",
                    ),
                    ToolEntry(
                        name="stat",
                        annotations=ToolAnnotations(title="File status"),
                        definition_hash=HASH,
                    ),
                ],
            ),
            ServerEntry(server="web", transport="streamable-http", status="provisioning"),
        ],
    )

    rows = catalog_rows(catalog)
    table = render_catalog(catalog).splitlines()

    fs = ["fs", "stdio", "2025-11-25", "healthy"]
    assert rows == [
        [*fs, "read_file", "read-only", "Read a file. Returns its text."],
        [*fs, "delete", "destructive,quarantined", "x" * 59 + "…"],
        [*fs, "stat", "-", "File status"],
        ["web", "streamable-http", "-", "provisioning", "-", "-", "-"],
    ]
    assert table[0].split() == [
        "SERVER",
        "TRANSPORT",
        "PROTOCOL",
        "STATUS",
        "TOOL",
        "HINTS",
        "DESCRIPTION",
    ]
    assert len(table) == 5


def test_result_shows_text_summarises_other_blocks_and_adds_structured_content() -> None:
    result = completed(
        content=[
            {"type": "text", "text": "line one\nline two"},
            {"type": "image", "mimeType": "image/png", "data": "QUJD"},
            {"type": "resource_link", "uri": "file:///a.txt", "name": "a"},
            {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "bee"}},
            {"type": "future", "x": 1},
        ],
        structured_content={"temperature": 21.5},
    )

    assert render_tool_result(result).splitlines() == [
        "line one",
        "line two",
        "[image image/png, 4 base64 characters]",
        "[resource link file:///a.txt]",
        "[resource file:///b.txt]",
        "bee",
        '{"type": "future", "x": 1}',
        "{",
        '  "temperature": 21.5',
        "}",
    ]


def test_structured_content_already_serialized_in_a_text_block_is_shown_once() -> None:
    result = completed(
        content=[{"type": "text", "text": '{"temperature":21.5}'}],
        structured_content={"temperature": 21.5},
    )

    assert render_tool_result(result) == '{"temperature":21.5}'


def test_status_lines() -> None:
    error = ErrorInfo(code=ErrorCode.NOT_FOUND, message="no tool 'x' on fs", retryable=False)
    busy = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="fs is restarting", retryable=True)

    assert describe_failure(error) == "failed: not_found: no tool 'x' on fs"
    assert describe_failure(busy) == "failed: unavailable: fs is restarting (retryable)"
    assert describe_progress(McpProgress(progress=3, total=10, message="copying", sequence=0)) == (
        "[progress 3/10: copying]"
    )
    assert describe_progress(McpProgress(progress=0.5, sequence=1)) == "[progress 0.5]"
    assert result_footer(completed(cached=True, is_error=True)) == (
        "[time/now · 12 ms · MCP 2025-11-25 · cached · the tool reported an error]"
    )


def test_mcp_request_types_are_registered_with_their_replies() -> None:
    registry = register_mcp(default_registry())

    call = registry.kind(MCP_TOOL_CALL_REQUESTED)
    listing = registry.kind(MCP_CATALOG_LIST_REQUESTED)

    assert call.request_model is ToolCallRequest
    assert {t: (r.model, r.role) for t, r in call.replies.items()} == {
        MCP_PROGRESS: (McpProgress, ReplyRole.PROGRESS),
        MCP_TOOL_CALL_COMPLETED: (ToolCallCompleted, ReplyRole.COMPLETED),
        MCP_FAILED: (McpFailed, ReplyRole.FAILED),
    }
    assert listing.request_model is CatalogListRequest
    assert listing.replies[MCP_CATALOG_LIST_COMPLETED].model is CatalogListCompleted
    assert registry.kind("ferryman.llm.chat.requested").replies  # chat still known


def test_the_reply_wait_covers_the_calls_own_bound() -> None:
    assert reply_wait(5.0) == 5.0 + REPLY_GRACE_SECONDS
    assert reply_wait(None) == 600.0
