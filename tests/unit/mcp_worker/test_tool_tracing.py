"""Tool calls are traced: an `execute_tool {tool}` CLIENT span with the GenAI and MCP
attributes (no argument values), whose W3C trace context reaches an MCP server in the
request's `params._meta` and an API in the HTTP headers."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from mcp_types import TextContent
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ferryman.contracts import ErrorCode, FerrymanError
from mcp_worker.execution.tool_span import tool_answered, tool_span
from mcp_worker.openapi.auth import ApiAuth, SchemeSecret
from mcp_worker.openapi.caller import ApiCaller
from mcp_worker.registry import ServerConfig
from mcp_worker.servers.session import McpSession
from mcp_worker.servers.transport import StdioLaunch, open_stdio
from tests.fakes.openapi_api import InventoryApi
from tests.unit.mcp_worker.conftest import INVENTORY_SCHEMES, INVENTORY_TOOLS

META_ECHO = Path(__file__).resolve().parents[2] / "fakes" / "mcp_servers" / "meta_echo.py"
STDIO = ServerConfig(command=sys.executable, args=[str(META_ECHO)])


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test")


@pytest.fixture
async def session() -> AsyncIterator[McpSession]:
    connector = open_stdio("echo", StdioLaunch(command=sys.executable, args=[str(META_ECHO)]))
    opened = McpSession("echo", connector)
    await opened.open(30)
    yield opened
    await opened.close()


def _only(spans: InMemorySpanExporter) -> ReadableSpan:
    finished = spans.get_finished_spans()
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


def _traceparent_ids(traceparent: str) -> tuple[int, int]:
    version, trace_id, parent_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(parent_id, 16)


async def test_the_mcp_server_receives_the_tool_spans_trace_context_in_meta(
    session: McpSession, spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    with tool_span("echo", "meta", STDIO, tracer) as span:
        result = await session.call_tool("meta", {}, timeout=30)
        tool_answered(span, is_error=bool(result.is_error))

    block = result.content[0]
    assert isinstance(block, TextContent)
    received = json.loads(block.text)
    recorded = _only(spans)
    context = recorded.get_span_context()
    assert context is not None
    assert _traceparent_ids(received["traceparent"]) == (context.trace_id, context.span_id)
    assert recorded.name == "execute_tool meta"
    assert recorded.kind is SpanKind.CLIENT
    assert dict(recorded.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "meta",
        "mcp.method.name": "tools/call",
        "ferryman.mcp.server": "echo",
    }
    assert recorded.status.status_code is StatusCode.UNSET


async def test_without_a_span_no_trace_context_is_sent(session: McpSession) -> None:
    result = await session.call_tool("meta", {}, timeout=30)

    block = result.content[0]
    assert isinstance(block, TextContent)
    assert "traceparent" not in json.loads(block.text)


def test_a_failed_call_sets_the_error_type_and_leaves_its_text_out(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    config = ServerConfig(url="https://tools.example:8443/mcp")
    secret = "token=s3cr3t"

    with pytest.raises(FerrymanError), tool_span("search", "find", config, tracer):
        raise FerrymanError(ErrorCode.UNAVAILABLE, f"refused {secret}", upstream="search")

    recorded = _only(spans)
    attributes = dict(recorded.attributes or {})
    assert attributes["error.type"] == "unavailable"
    assert (attributes["server.address"], attributes["server.port"]) == ("tools.example", 8443)
    assert recorded.status.status_code is StatusCode.ERROR
    assert secret not in repr(attributes) + str(recorded.status.description) + str(
        [event.attributes for event in recorded.events]
    )


def test_a_tool_error_result_marks_the_span(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    with tool_span("echo", "fail", STDIO, tracer) as span:
        tool_answered(span, is_error=True)

    recorded = _only(spans)
    assert dict(recorded.attributes or {})["error.type"] == "tool_error"
    assert recorded.status.status_code is StatusCode.ERROR


async def test_an_api_receives_the_trace_context_as_http_headers(
    api: InventoryApi, spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    async with httpx2.AsyncClient() as client:
        secrets = {"oauth": SchemeSecret(client_id="client-1", client_secret="client-secret-1")}
        auth = ApiAuth("inv", INVENTORY_SCHEMES, secrets, base_url=api.base_url, client=client)
        caller = ApiCaller(
            "inv", INVENTORY_TOOLS, base_url=api.base_url, auth=auth, client=client,
            max_bytes=10_000,
        )  # fmt: skip
        config = ServerConfig(type="openapi", spec="api-v1.json", base_url=api.base_url)
        with tool_span("inv", "listItems", config, tracer):
            result = await caller.call("listItems", {}, timeout=30)

    assert result.status == 200
    context = _only(spans).get_span_context()
    assert context is not None
    (request,) = api.requests_to("listItems")
    assert _traceparent_ids(request.headers["traceparent"]) == (
        context.trace_id,
        context.span_id,
    )
