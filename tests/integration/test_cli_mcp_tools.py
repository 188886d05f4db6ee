"""`ferryman tools list|call` and `McpToolsClient` against the real Kafka, answered by a fake
mcp_worker: a test double at the Kafka wire that reads the test's request topic and answers
with CloudEvents encoded by the project's codec, on the topic named by `ce_replyto`, echoing
the reply token. (The end-to-end test with the real mcp_worker lives with that worker.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from ferryman.cli import main as ferryman
from ferryman.codec import IncomingEvent, decode_event, encode_event
from ferryman.contracts import ErrorCode, ErrorInfo
from ferryman.contracts import events as ev
from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_COMPLETED,
    MCP_CATALOG_LIST_REQUESTED,
    MCP_FAILED,
    MCP_PROGRESS,
    MCP_TOOL_CALL_COMPLETED,
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
from ferryman.publisher import KafkaPublisher
from ferryman.tools_client import McpFailedError, McpToolsClient
from ferryman.topics import ensure_topics

pytestmark = pytest.mark.integration

HASH = "c" * 64
RUN = "1700000000000-aaaaaaaaaaaa"
SCHEMA = {"type": "object", "properties": {"timezone": {"type": "string"}}}
CATALOG = [
    ServerEntry(
        server="time",
        transport="stdio",
        protocol_version="2025-11-25",
        tools=[
            ToolEntry(
                name="get_current_time",
                description="Current time in a timezone.",
                input_schema=SCHEMA,
                annotations=ToolAnnotations(read_only=True),
                definition_hash=HASH,
            )
        ],
    ),
    ServerEntry(server="files", transport="streamable-http", status="degraded"),
]


@dataclass
class McpTopics:
    requests: str
    replies: str


@pytest.fixture
async def mcp_topics(kafka_bootstrap: str, unique: str) -> McpTopics:
    topics = McpTopics(requests=f"t-{unique}.mcp.requests", replies=f"t-{unique}.mcp.results")
    await ensure_topics(
        kafka_bootstrap, [topics.requests, topics.replies], partitions=1, replication_factor=1
    )
    return topics


def _without_schemas(entry: ServerEntry) -> ServerEntry:
    tools = [t.model_copy(update={"input_schema": None}) for t in entry.tools]
    return entry.model_copy(update={"tools": tools})


class FakeMcpWorker:
    """Answers MCP requests the way the mcp_worker does on the wire (binary CloudEvents
    keyed by request id, `correlationid`, `runid`, the echoed `replytoken`)."""

    def __init__(self, publisher: KafkaPublisher) -> None:
        self.publisher = publisher
        self.seen: list[IncomingEvent] = []
        self.serving: asyncio.Task[None] | None = None

    async def reply(self, request: IncomingEvent, n: int, event_type: str, data: BaseModel) -> None:
        extensions = {ev.EXT_RUN_ID: RUN}
        token = request.extension(ev.EXT_REPLY_TOKEN)
        if token is not None:
            extensions[ev.EXT_REPLY_TOKEN] = token
        headers = encode_event(
            event_type=event_type,
            source="/fake-mcp-worker",
            data=b"",
            correlation_id=request.id,
            extensions=extensions,
            event_id=f"{request.id}.{n}",
        )
        topic = request.extension(ev.EXT_REPLY_TO)
        assert topic is not None
        value = data.model_dump_json(exclude_none=True).encode()
        await self.publisher.send_and_wait(topic, value, key=request.id.encode(), headers=headers)

    async def answer(self, request: IncomingEvent) -> None:
        self.seen.append(request)
        if request.type == MCP_CATALOG_LIST_REQUESTED:
            listing = CatalogListRequest.model_validate(request.data)
            servers = [
                _without_schemas(s) if not listing.include_schemas else s
                for s in CATALOG
                if listing.servers is None or s.server in listing.servers
            ]
            done = CatalogListCompleted(servers=servers, catalog_version="v7")
            await self.reply(request, 0, MCP_CATALOG_LIST_COMPLETED, done)
            return
        call = ToolCallRequest.model_validate(request.data)
        if call.tool == "explode":
            error = ErrorInfo(
                code=ErrorCode.NOT_FOUND, message="no tool 'explode' on time", retryable=False
            )
            await self.reply(request, 0, MCP_FAILED, McpFailed(error=error))
            return
        for n, step in enumerate((1, 2, 2)):  # the last one repeats event id .2: dropped
            note = McpProgress(progress=step, total=2, message=f"step {step}", sequence=step - 1)
            await self.reply(request, min(n + 1, 2), MCP_PROGRESS, note)
        failing = call.tool == "fail_softly"
        result = ToolCallCompleted(
            server=call.server,
            tool=call.tool,
            content=[{"type": "text", "text": "no such timezone" if failing else "12:00 UTC"}],
            structured_content=None if failing else {"echo": call.arguments},
            is_error=failing,
            protocol_version="2025-11-25",
            definition_hash=HASH,
            duration_ms=3.0,
        )
        await self.reply(request, 3, MCP_TOOL_CALL_COMPLETED, result)


@contextlib.asynccontextmanager
async def fake_mcp_worker(bootstrap: str, request_topic: str) -> AsyncIterator[FakeMcpWorker]:
    publisher = KafkaPublisher(bootstrap, client_id="fake-mcp-worker")
    consumer = AIOKafkaConsumer(
        request_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await publisher.start()
    await consumer.start()
    worker = FakeMcpWorker(publisher)

    async def serve() -> None:
        async for record in consumer:
            await worker.answer(decode_event(record.headers, record.value))

    task = worker.serving = asyncio.create_task(serve())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        await publisher.stop()


def argv(bootstrap: str, topics: McpTopics, *args: str) -> list[str]:
    return [
        *args,
        "-b",
        bootstrap,
        "--request-topic",
        topics.requests,
        "--reply-topic",
        topics.replies,
    ]


async def run(worker: FakeMcpWorker, bootstrap: str, topics: McpTopics, *args: str) -> int:
    """Run the CLI in a thread; fail at once if the fake worker broke (instead of waiting
    for the CLI's own timeout)."""
    assert worker.serving is not None
    cli = asyncio.ensure_future(asyncio.to_thread(ferryman, argv(bootstrap, topics, *args)))
    done, _ = await asyncio.wait(
        {cli, worker.serving}, timeout=60, return_when=asyncio.FIRST_COMPLETED
    )
    if worker.serving in done:
        worker.serving.result()
        raise AssertionError("the fake mcp worker stopped")
    assert cli in done, "the CLI did not finish within 60 s"
    return cli.result()


async def test_tools_list_prints_the_catalog_the_tenant_may_see(
    kafka_bootstrap: str, mcp_topics: McpTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_mcp_worker(kafka_bootstrap, mcp_topics.requests) as worker:
        table_code = await run(
            worker, kafka_bootstrap, mcp_topics, "tools", "list", "--tenant", "acme"
        )
        table = capsys.readouterr().out.splitlines()
        json_code = await run(
            worker,
            kafka_bootstrap,
            mcp_topics,
            *("tools", "list", "--server", "time", "--no-schemas", "--json"),
        )
        listed = CatalogListCompleted.model_validate_json(capsys.readouterr().out)

    assert (table_code, json_code) == (0, 0)
    assert table[0].split() == [
        "SERVER",
        "TRANSPORT",
        "PROTOCOL",
        "STATUS",
        "TOOL",
        "HINTS",
        "DESCRIPTION",
    ]
    assert table[1].split() == [
        "time",
        "stdio",
        "2025-11-25",
        "healthy",
        "get_current_time",
        "read-only",
        *["Current", "time", "in", "a", "timezone."],
    ]
    assert table[2].split() == ["files", "streamable-http", "-", "degraded", "-", "-", "-"]
    assert [s.server for s in listed.servers] == ["time"]
    assert listed.servers[0].tools[0].input_schema is None
    first, second = worker.seen
    assert first.extension(ev.EXT_TENANT) == "acme"
    assert second.extension(ev.EXT_TENANT) is None
    assert CatalogListRequest.model_validate(second.data) == CatalogListRequest(
        servers=["time"], include_schemas=False
    )


async def test_tools_call_prints_progress_then_the_result(
    kafka_bootstrap: str, mcp_topics: McpTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_mcp_worker(kafka_bootstrap, mcp_topics.requests) as worker:
        code = await run(
            worker,
            kafka_bootstrap,
            mcp_topics,
            *("tools", "call", "time", "get_current_time", "--args", '{"timezone": "UTC"}'),
            *("--tenant", "acme", "--principal", "ana", "--timeout", "5", "--no-cache"),
        )
    out, err = capsys.readouterr()

    assert code == 0
    assert out.splitlines() == [
        "12:00 UTC",
        "{",
        '  "echo": {',
        '    "timezone": "UTC"',
        "  }",
        "}",
    ]
    assert err.splitlines() == [
        "[progress 1/2: step 1]",
        "[progress 2/2: step 2]",
        "[time/get_current_time · 3 ms · MCP 2025-11-25]",
    ]
    (request,) = worker.seen
    assert request.extension(ev.EXT_TENANT) == "acme"
    assert request.extension(ev.EXT_REPLY_TOKEN)  # the replies had to echo it
    assert request.extension(ev.EXT_REPLY_TO) == mcp_topics.replies
    assert ToolCallRequest.model_validate(request.data) == ToolCallRequest(
        server="time",
        tool="get_current_time",
        arguments={"timezone": "UTC"},
        timeout=5,
        principal="ana",
        use_cache=False,
    )


async def test_a_tool_error_exits_1_and_a_failed_request_exits_2(
    kafka_bootstrap: str, mcp_topics: McpTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_mcp_worker(kafka_bootstrap, mcp_topics.requests) as worker:
        soft = await run(
            worker, kafka_bootstrap, mcp_topics, "tools", "call", "time", "fail_softly"
        )
        soft_out, soft_err = capsys.readouterr()
        hard = await run(worker, kafka_bootstrap, mcp_topics, "tools", "call", "time", "explode")
        hard_out, hard_err = capsys.readouterr()
        as_json = await run(
            worker, kafka_bootstrap, mcp_topics, "tools", "call", "time", "fail_softly", "--json"
        )
        json_out = capsys.readouterr().out

    assert (soft, hard, as_json) == (1, 2, 1)
    assert soft_out == "no such timezone\n"
    assert soft_err.splitlines()[-1].endswith("· the tool reported an error]")
    assert hard_out == ""
    assert hard_err.splitlines()[-1] == "failed: not_found: no tool 'explode' on time"
    assert ToolCallCompleted.model_validate_json(json_out).is_error


async def test_invalid_args_publish_nothing(
    kafka_bootstrap: str, mcp_topics: McpTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_mcp_worker(kafka_bootstrap, mcp_topics.requests) as worker:
        with pytest.raises(SystemExit) as refused:
            ferryman(argv(kafka_bootstrap, mcp_topics, "tools", "call", "time", "a", "--args", "{"))
        # One partition: a request published before this one would have been answered first.
        assert await run(worker, kafka_bootstrap, mcp_topics, "tools", "call", "time", "b") == 0
    capsys.readouterr()

    assert refused.value.code == 2
    assert [ToolCallRequest.model_validate(r.data).tool for r in worker.seen] == ["b"]


async def test_client_streams_progress_and_raises_the_failure(
    kafka_bootstrap: str, mcp_topics: McpTopics
) -> None:
    async with (
        fake_mcp_worker(kafka_bootstrap, mcp_topics.requests),
        McpToolsClient(
            kafka_bootstrap, request_topic=mcp_topics.requests, reply_topic=mcp_topics.replies
        ) as tools,
    ):
        events = [
            e async for e in tools.call_tool_stream("time", "now", {"x": 1}, tenant="t1", timeout=5)
        ]
        result = await tools.call_tool("time", "fail_softly")
        catalog = await tools.list_tools(["files"], tenant="t1")
        with pytest.raises(McpFailedError) as failed:
            await tools.call_tool("time", "explode")

    assert [type(e) for e in events] == [McpProgress, McpProgress, ToolCallCompleted]
    assert [e.progress for e in events if isinstance(e, McpProgress)] == [1, 2]
    assert isinstance(events[-1], ToolCallCompleted)
    assert events[-1].structured_content == {"echo": {"x": 1}}
    assert result.is_error
    assert [s.server for s in catalog.servers] == ["files"]
    assert failed.value.error.code == ErrorCode.NOT_FOUND
    assert not failed.value.error.retryable
