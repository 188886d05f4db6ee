"""One trace across the tool loop: producer → llm_worker → mcp_worker → llm_worker → consumer.

Both workers run as real processes (`python -m llm_worker`, `python -m mcp_worker`) with only
the standard `OTEL_*` variables set, and export over OTLP/HTTP to a protobuf sink in this
test; the model is the fake OpenAI server scripted to call the toolbox MCP server's `echo`.
The workers are stopped with SIGTERM before the spans are read: what they export on the way
out (the batch processor's flush) is part of the test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from ferryman.client import FerrymanClient
from ferryman.codec import header_value
from ferryman.contracts.llm import LLM_CHAT_COMPLETED, LLM_CHAT_REQUESTED
from ferryman.topics import ensure_topics
from ferryman_runtime.telemetry.spans import parent_context
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import free_port, read_topic
from tests.integration.test_mcp_worker_e2e import toolbox_entry, write_registry
from tests.integration.tool_loop_harness import MODEL, tool_request, toolbox_call
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class SinkSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    destination: str = ""
    """`messaging.destination.name` (empty on spans without one)."""


class OtlpSink(ThreadingHTTPServer):
    """Receives OTLP/HTTP protobuf exports and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[SinkSpan] = []
        super().__init__(("127.0.0.1", 0), _ExportHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ExportHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        export = ExportTraceServiceRequest.FromString(
            self.rfile.read(int(self.headers["Content-Length"]))
        )
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(  # type: ignore[attr-defined]
                        SinkSpan(
                            attributes["service.name"],
                            span.name,
                            ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            next(
                                (
                                    a.value.string_value
                                    for a in span.attributes
                                    if a.key == "messaging.destination.name"
                                ),
                                "",
                            ),
                        )
                    )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    server = OtlpSink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_one_trace_covers_the_tool_loop_across_both_workers(
    kafka_bootstrap: str, unique: str, tmp_path: Path, sink: OtlpSink
) -> None:
    prefix = f"t-{unique}"
    topics = {
        "llm_requests": f"{prefix}.llm.requests",
        "llm_results": f"{prefix}.llm.results",
        "mcp_requests": f"{prefix}.mcp.requests",
        "mcp_results": f"{prefix}.mcp.results",
        "control": f"{prefix}.mcp.control",
        "catalog": f"{prefix}.mcp.catalog",
        "tool_loop": f"{prefix}.llm.tool-loop.results",
    }
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
    registry = write_registry(tmp_path / "servers.json", {"toolbox": toolbox_entry(start="eager")})
    mcp_port = free_port()
    mcp = WorkerProcess(
        "mcp_worker",
        {
            **otel,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MCP_WORKER_REQUEST_TOPIC": topics["mcp_requests"],
            "MCP_WORKER_DEFAULT_REPLY_TOPIC": topics["mcp_results"],
            "MCP_WORKER_CONTROL_TOPIC": topics["control"],
            "MCP_WORKER_CATALOG_TOPIC": topics["catalog"],
            "MCP_WORKER_AUDIT_TOPIC": f"{prefix}.mcp.audit",
            "MCP_WORKER_HEALTH_TOPIC": f"{prefix}.mcp.health",
            "MCP_WORKER_GROUP_ID": f"g-mcp-{unique}",
            "MCP_WORKER_INSTANCE_ID": f"mcp-{unique}",
            "MCP_WORKER_TOPIC_PARTITIONS": "2",
            "MCP_WORKER_REGISTRY_FILE": str(registry),
            "MCP_WORKER_PACKAGES_DIR": str(tmp_path / "packages"),
            "MCP_WORKER_HTTP_PORT": str(mcp_port),
            "MCP_WORKER_LOG_FORMAT": "json",
        },
        tmp_path / "mcp.log",
        mcp_port,
    )
    fake = FakeOpenAI()
    await fake.start()
    fake.scenarios[MODEL] = Scenario(
        tool_steps=[[toolbox_call("echo", text="traced")]], echo_tool_results=True
    )
    llm_port = free_port()
    llm = WorkerProcess(
        "llm_worker",
        {
            **otel,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "LLM_WORKER_REQUEST_TOPIC": topics["llm_requests"],
            "LLM_WORKER_DEFAULT_REPLY_TOPIC": topics["llm_results"],
            "LLM_WORKER_HEALTH_TOPIC": f"{prefix}.llm.health",
            "LLM_WORKER_GROUP_ID": f"g-llm-{unique}",
            "LLM_WORKER_INSTANCE_ID": f"llm-{unique}",
            "LLM_WORKER_TOPIC_PARTITIONS": "2",
            "LLM_WORKER_HTTP_PORT": str(llm_port),
            "LLM_WORKER_CONTROL_TOPIC": topics["control"],
            "LLM_WORKER_CATALOG_TOPIC": topics["catalog"],
            "LLM_WORKER_MCP_REQUEST_TOPIC": topics["mcp_requests"],
            "LLM_WORKER_TOOL_LOOP_TOPIC": topics["tool_loop"],
            "LLM_WORKER_LOG_FORMAT": "json",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": fake.base_url,
        },
        tmp_path / "llm.log",
        llm_port,
    )
    producer = TracerProvider(resource=Resource.create({"service.name": "producer"}))
    producer.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{sink.endpoint}/v1/traces")))
    tracer = producer.get_tracer("test")
    try:
        mcp.start()
        await mcp.wait_ready()
        await read_topic(
            kafka_bootstrap,
            topics["catalog"],
            until=lambda records: any(b'"tools":[{' in r.value for r in records),
            timeout=90,
        )
        llm.start()
        await llm.wait_ready()
        await ensure_topics(
            kafka_bootstrap, [topics["llm_results"]], partitions=2, replication_factor=1
        )
        async with FerrymanClient(
            kafka_bootstrap,
            request_topic=topics["llm_requests"],
            reply_topic=topics["llm_results"],
            source=f"/test/{unique}",
        ) as client:
            with tracer.start_as_current_span(
                f"send {topics['llm_requests']}", kind=SpanKind.PRODUCER
            ):
                published = await client.publish(
                    LLM_CHAT_REQUESTED, tool_request(f"openai/{MODEL}")
                )

        def completed(record: Any) -> bool:
            return (
                header_value(record.headers, "ce_correlationid") == published.id
                and header_value(record.headers, "ce_type") == LLM_CHAT_COMPLETED
            )

        records = await read_topic(
            kafka_bootstrap,
            topics["llm_results"],
            until=lambda records: any(completed(r) for r in records),
            timeout=120,
        )
        [result] = [r for r in records if completed(r)]
        assert json.loads(result.value)["content"] == "tool results: traced"
        # The consumer continues the trace from the result event, as any consumer would.
        traceparent = header_value(result.headers, "ce_traceparent")
        tracestate = header_value(result.headers, "ce_tracestate")
        tracer.start_span(
            f"process {topics['llm_results']}",
            context=parent_context(traceparent, tracestate),
            kind=SpanKind.CONSUMER,
        ).end()
        assert await llm.stop() == 0
        assert await mcp.stop() == 0
    finally:
        llm.kill()
        mcp.kill()
        await fake.stop()
        producer.shutdown()

    spans = list(sink.spans)
    by_id = {span.span_id: span for span in spans}
    tree = _tree(spans)
    print(tree)
    (tmp_path / "trace.txt").write_text(tree)

    def one(service: str, name: str) -> SinkSpan:
        [span] = [s for s in spans if (s.service, s.name) == (service, name)]
        return span

    def ancestors(span: SinkSpan) -> list[SinkSpan]:
        chain: list[SinkSpan] = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span)
        return chain

    sent = one("producer", f"send {topics['llm_requests']}")
    llm_process = one("llm_worker", f"process {topics['llm_requests']}")
    tool_send = one("llm_worker", f"send {topics['mcp_requests']}")
    mcp_process = one("mcp_worker", f"process {topics['mcp_requests']}")
    # The tool-loop topic is the llm_worker's choice, not a topic the mcp_worker configured:
    # it stays out of the span name. The llm_worker's default reply topic is its own.
    mcp_reply = one("mcp_worker", "send reply")
    assert mcp_reply.destination == topics["tool_loop"]
    llm_reply = one("llm_worker", f"send {topics['llm_results']}")
    consumed = one("producer", f"process {topics['llm_results']}")
    chain = [sent, llm_process, tool_send, mcp_process, mcp_reply, llm_reply, consumed]
    assert {span.trace_id for span in chain} == {sent.trace_id}
    assert [span.kind for span in chain] == [
        "PRODUCER", "CONSUMER", "PRODUCER", "CONSUMER", "PRODUCER", "PRODUCER", "CONSUMER",
    ]  # fmt: skip
    # Each hop's consumer span is the child of the producer span that sent its event.
    assert llm_process.parent_id == sent.span_id
    assert mcp_process.parent_id == tool_send.span_id
    assert consumed.parent_id == llm_reply.span_id
    assert llm_process in ancestors(tool_send)
    assert mcp_process in ancestors(mcp_reply)
    assert llm_process in ancestors(llm_reply)
    # The result event carries the llm_worker's send span, not the producer's context.
    assert traceparent is not None
    assert traceparent.split("-")[1:3] == [llm_reply.trace_id, llm_reply.span_id]
    # Nothing in the request's trace is orphaned: every span descends from the producer's.
    in_trace = {s.span_id for s in spans if s.trace_id == sent.trace_id}
    assert in_trace == {s.span_id for s in spans if s is sent or sent in ancestors(s)}
    assert {by_id[i].service for i in in_trace} == {"producer", "llm_worker", "mcp_worker"}
    # JSON logs name the worker on every line.
    for log, service in (
        (tmp_path / "llm.log", "llm_worker"),
        (tmp_path / "mcp.log", "mcp_worker"),
    ):
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert lines
        assert {line["service"] for line in lines} == {service}


def _tree(spans: list[SinkSpan]) -> str:
    """The spans as an indented tree per trace: service, name, kind, parent."""
    children: dict[str, list[SinkSpan]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(span: SinkSpan, depth: int) -> None:
        parent = span.parent_id or "-"
        lines.append(
            f"{'  ' * depth}{span.service:<11} {span.kind:<8} {span.name}"
            f"  [span {span.span_id} parent {parent}]"
        )
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for root in children.get("", []):
        lines.append(f"trace {root.trace_id}")
        walk(root, 1)
    return "\n".join(lines) + "\n"
