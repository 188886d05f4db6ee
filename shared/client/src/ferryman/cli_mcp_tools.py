"""`ferryman tools list` and `ferryman tools call`: MCP tools through the mcp_worker.

Exit codes of `tools call`: 0 the tool answered, 1 the tool answered with an error of its
own (`is_error`), 2 the request failed (`ferryman.mcp.failed`), no reply came in time, or
the input was invalid (nothing is published then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from ferryman.cli_tools import add_reply_arguments, positive_float, render_table
from ferryman.client import RunRestarted, TopicSpec
from ferryman.contracts import ErrorInfo
from ferryman.contracts.mcp import (
    DEFAULT_MCP_REPLY_TOPIC,
    DEFAULT_MCP_REQUEST_TOPIC,
    CatalogListCompleted,
    ContentBlock,
    McpProgress,
    ToolCallCompleted,
    ToolCallRequest,
    ToolEntry,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.tools_client import McpFailedError, McpToolsClient, reply_wait

DESCRIPTION_CHARS = 60
EXIT_TOOL_ERROR = 1
EXIT_FAILED = 2


def add_tools_arguments(tools: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the `list` and `call` subcommands to the `tools` command's parser (`common`:
    the global options, accepted after the subcommand too)."""
    subcommands = tools.add_subparsers(dest="tools_command", required=True)
    listing = subcommands.add_parser(
        "list", help="the servers and tools your tenant may see", parents=[common]
    )
    listing.add_argument(
        "--server", action="append", dest="servers", metavar="NAME", help="only this server"
    )
    listing.add_argument("--no-schemas", action="store_true", help="leave out the tool schemas")
    listing.add_argument("--timeout", type=positive_float, default=60.0, help="seconds to wait")
    listing.add_argument("--json", action="store_true", help="print the catalog as JSON")
    _client_arguments(listing)

    call = subcommands.add_parser("call", help="call a tool and print its result", parents=[common])
    call.add_argument("server")
    call.add_argument("tool")
    call.add_argument(
        "--args",
        type=tool_arguments,
        default={},
        metavar="JSON",
        help="the tool's arguments: a JSON object, or @FILE (@- for stdin)",
    )
    call.add_argument("--timeout", type=positive_float, help="seconds the call may take")
    call.add_argument("--principal", help="who asks, for the audit record")
    call.add_argument("--no-cache", action="store_true", help="refuse a cached result")
    call.add_argument("--json", action="store_true", help="print the completed event as JSON")
    _client_arguments(call)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="the tenant the request is made for")
    parser.add_argument("--request-topic", default=DEFAULT_MCP_REQUEST_TOPIC)
    parser.add_argument("--reply-topic", default=DEFAULT_MCP_REPLY_TOPIC)
    add_reply_arguments(parser)


def tool_arguments(text: str) -> dict[str, Any]:
    """Parse `--args`: a JSON object, or `@path` of a file holding one (`@-`: stdin).

    The message never repeats the input (arguments may hold secrets), only where it is wrong.

    Raises:
        argparse.ArgumentTypeError: unreadable file, invalid JSON, or not an object.
    """
    where = ""
    if text.startswith("@"):
        path = text[1:]
        source = "stdin" if path == "-" else path
        where = f"{source} "
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise argparse.ArgumentTypeError(f"cannot read {source}: {reason}") from None
    try:
        value: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{where}not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{where}not a JSON object of the tool's arguments but {type(value).__name__}"
        )
    return cast(dict[str, Any], value)


def _hints(tool: ToolEntry) -> str:
    hints: list[str] = []
    if tool.annotations.read_only:
        hints.append("read-only")
    if tool.annotations.destructive:
        hints.append("destructive")
    if tool.state == "quarantined":
        hints.append("quarantined")
    return ",".join(hints) or "-"


def _short(text: str | None) -> str:
    line = " ".join((text or "").split())
    if not line:
        return "-"
    return line if len(line) <= DESCRIPTION_CHARS else line[: DESCRIPTION_CHARS - 1] + "…"


def catalog_rows(catalog: CatalogListCompleted) -> list[list[str]]:
    """One row per tool (a server without tools gets one row with tool `-`): server,
    transport, protocol version, status, tool, hints, short description."""
    rows: list[list[str]] = []
    for entry in catalog.servers:
        server = [entry.server, entry.transport, entry.protocol_version or "-", entry.status]
        if not entry.tools:
            rows.append([*server, "-", "-", "-"])
        for tool in entry.tools:
            description = tool.description or tool.annotations.title
            rows.append([*server, tool.name, _hints(tool), _short(description)])
    return rows


def render_catalog(catalog: CatalogListCompleted) -> str:
    """The catalog as a table (see `catalog_rows`)."""
    header = ["SERVER", "TRANSPORT", "PROTOCOL", "STATUS", "TOOL", "HINTS", "DESCRIPTION"]
    return render_table(header, catalog_rows(catalog))


def _block_text(block: ContentBlock) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        size = len(str(block.get("data", "")))
        return f"[{kind} {block.get('mimeType', '?')}, {size} base64 characters]"
    if kind == "resource_link":
        return f"[resource link {block.get('uri', '?')}]"
    if kind == "resource":
        resource = cast(dict[str, Any], block.get("resource") or {})
        text = resource.get("text")
        head = f"[resource {resource.get('uri', '?')}]"
        return f"{head}\n{text}" if isinstance(text, str) else head
    return json.dumps(block, ensure_ascii=False)


def _same_json(text: str, value: object) -> bool:
    try:
        return bool(json.loads(text) == value)
    except ValueError:
        return False


def render_tool_result(completed: ToolCallCompleted) -> str:
    """The result for people: content blocks in order (text as is, others summarised), then
    the structured content as JSON unless a text block already holds the same JSON."""
    parts = [_block_text(block) for block in completed.content]
    structured = completed.structured_content
    if structured is not None and not any(
        block.get("type") == "text" and _same_json(str(block.get("text", "")), structured)
        for block in completed.content
    ):
        parts.append(json.dumps(structured, indent=2, ensure_ascii=False))
    return "\n".join(parts)


def result_footer(completed: ToolCallCompleted) -> str:
    """The stderr line after a result: tool, duration, protocol and flags."""
    parts = [
        f"{completed.server}/{completed.tool}",
        f"{completed.duration_ms:.0f} ms",
        f"MCP {completed.protocol_version}",
    ]
    if completed.cached:
        parts.append("cached")
    if completed.truncated:
        parts.append("truncated")
    if completed.is_error:
        parts.append("the tool reported an error")
    return "[" + " · ".join(parts) + "]"


def describe_progress(progress: McpProgress) -> str:
    """A progress line: `[progress 3/10: message]`."""
    amount = f"{progress.progress:g}"
    if progress.total is not None:
        amount += f"/{progress.total:g}"
    return f"[progress {amount}" + (f": {progress.message}]" if progress.message else "]")


def describe_failure(error: ErrorInfo) -> str:
    """The stderr line of a failed request: code, message, and whether a retry may help."""
    retry = " (retryable)" if error.retryable else ""
    return f"failed: {error.code}: {error.message}{retry}"


def _client(connection: KafkaConnection, args: argparse.Namespace) -> McpToolsClient:
    return McpToolsClient(
        connection,
        request_topic=args.request_topic,
        reply_topic=args.reply_topic,
        reply_partition=args.reply_partition,
        create_reply_topic=TopicSpec() if args.create_reply_topic else False,
    )


async def tools_command(connection: KafkaConnection, args: argparse.Namespace) -> int:
    """`ferryman tools list|call` (exit codes: see the module docstring).

    Raises:
        LookupError: the reply topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    if args.tools_command == "list":
        return await _list(connection, args)
    return await _call(connection, args)


async def _list(connection: KafkaConnection, args: argparse.Namespace) -> int:
    async with _client(connection, args) as client:
        try:
            catalog = await client.list_tools(
                args.servers,
                include_schemas=not args.no_schemas,
                tenant=args.tenant,
                timeout=args.timeout,
            )
        except McpFailedError as exc:
            print(describe_failure(exc.error), file=sys.stderr)
            return EXIT_FAILED
        except TimeoutError:
            print(_no_reply(args.timeout), file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(catalog.model_dump_json(indent=2))
    elif catalog.servers:
        print(render_catalog(catalog))
    else:
        print("no MCP servers visible to this tenant", file=sys.stderr)
    return 0


def _no_reply(seconds: float) -> str:
    return f"no reply within {seconds:.0f}s (is an mcp_worker reading the request topic?)"


async def _call(connection: KafkaConnection, args: argparse.Namespace) -> int:
    try:
        request = ToolCallRequest(
            server=args.server,
            tool=args.tool,
            arguments=args.args,
            timeout=args.timeout,
            principal=args.principal,
            use_cache=not args.no_cache,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        print(f"ferryman tools call: {problems}", file=sys.stderr)
        return EXIT_FAILED
    wait = reply_wait(request.timeout)
    completed: ToolCallCompleted | None = None
    async with _client(connection, args) as client:
        stream = client.call_tool_stream(
            request.server,
            request.tool,
            request.arguments,
            tenant=args.tenant,
            timeout=request.timeout,
            principal=request.principal,
            use_cache=request.use_cache,
            wait=wait,
        )
        try:
            async for event in stream:
                if isinstance(event, McpProgress):
                    print(describe_progress(event), file=sys.stderr, flush=True)
                elif isinstance(event, RunRestarted):
                    print(f"[the request runs again (run {event.run_id})]", file=sys.stderr)
                else:
                    completed = event
        except McpFailedError as exc:
            print(describe_failure(exc.error), file=sys.stderr)
            return EXIT_FAILED
        except TimeoutError:
            print(_no_reply(wait), file=sys.stderr)
            return EXIT_FAILED
    if completed is None:  # the stream ends only after its terminal reply
        raise RuntimeError("the reply stream ended without a result")
    if args.json:
        print(completed.model_dump_json(indent=2))
    else:
        print(render_tool_result(completed))
        print(result_footer(completed), file=sys.stderr)
    return EXIT_TOOL_ERROR if completed.is_error else 0
