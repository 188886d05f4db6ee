"""Tracing: the `OTEL_*` configuration (off by default), the `process` span continuing the
request's trace, result events carrying the worker's span context, and tool calls and
client requests carrying the current span."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ferryman.codec import encode_binary, header_value
from ferryman.contracts import ErrorInfo
from ferryman.contracts.errors import ErrorCode
from ferryman.contracts.mcp import ToolCallRequest
from ferryman.replies import ReplyRegistry
from ferryman.request_encoding import RequestOptions, encode_request
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.entry import service_name
from ferryman_runtime.job import Job, RequestSpec
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.pipeline import RequestPipeline
from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory
from ferryman_runtime.telemetry.tracing import (
    DEFAULT_TRACES_ENDPOINT,
    TracingConfig,
    TracingConfigError,
    install_tracing,
)
from llm_worker.settings import LlmWorkerSettings
from llm_worker.tool_loop.dispatch import ToolDispatcher
from mcp_worker.settings import McpWorkerSettings
from tests.fakes.publisher import RawPublisher

PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"
TRACESTATE = "vendor=abc"


class Echo(BaseModel):
    text: str


class _Failed(BaseModel):
    error: ErrorInfo


class _EchoService:
    """Emits one chunk, then completes (or fails when the text says so)."""

    async def execute(self, job: Job[Echo]) -> None:
        await job.replies.emit("echo.chunk", job.request)
        if job.request.text == "fail":
            info = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="down", retryable=True)
            await job.replies.fail(info)
        else:
            await job.replies.finish("echo.done", job.request)


_SPEC = RequestSpec(requests={"echo": Echo}, failed_type="echo.failed", failed_model=_Failed)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test")


def echo_pipeline(publisher: RawPublisher, tracer: trace.Tracer | None) -> RequestPipeline[Any]:
    registry = CollectorRegistry()

    async def topics() -> set[str]:
        return {"replies", "requests", "requests.dlq"}

    return RequestPipeline(
        spec=_SPEC,
        service=_EchoService(),
        publisher=publisher,  # type: ignore[arg-type]
        recent=RecentRequests(window=60, max_entries=100),
        metrics=ConsumerMetrics(registry),
        source="/test/worker",
        reply_topics=ReplyTopicPolicy(
            default="replies", patterns=[], own_topics=["requests", "requests.dlq"]
        ),
        directory=TopicDirectory(topics),
        default_reply_topic="replies",
        dlq_topic="requests.dlq",
        group_id="g-echo",
        tracer=tracer,
    )


def echo_record(
    text: str = "hi", *, data: dict[str, Any] | None = None, **extensions: str
) -> ConsumerRecord[bytes, bytes]:
    attributes = {"id": "e1", "type": "echo", "source": "/p", "datacontenttype": "application/json"}
    payload = json.dumps({"text": text} if data is None else data).encode()
    headers, body = encode_binary({**attributes, **extensions}, payload)
    return ConsumerRecord(
        topic="requests",
        partition=3,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=body,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(body),
        headers=headers,
    )


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.name == name]
    return span


# --- configuration ----------------------------------------------------------------------


def test_tracing_is_off_by_default_and_nothing_is_installed() -> None:
    installed: list[TracerProvider] = []

    config = TracingConfig.from_environ({"OTEL_SERVICE_NAME": "x"})

    assert not config.enabled
    assert install_tracing(config, service_name="w", install=installed.append) is None
    assert installed == []


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318/"}, "http://col:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://col/x"}, "http://col/x"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, DEFAULT_TRACES_ENDPOINT),
    ],
)
def test_an_exporter_or_an_endpoint_turns_tracing_on(
    environ: dict[str, str], endpoint: str
) -> None:
    config = TracingConfig.from_environ(environ)

    assert config.exporters == ("otlp",)
    assert config.endpoint == endpoint


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_none_or_a_disabled_sdk_keeps_tracing_off(environ: dict[str, str]) -> None:
    assert not TracingConfig.from_environ(environ).enabled


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "'grpc'"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "between 0 and 1",
        ),
    ],
)
def test_an_unusable_variable_is_a_clear_error(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(TracingConfigError, match=problem):
        TracingConfig.from_environ(environ)


def test_sampler_and_resource_come_from_the_environment() -> None:
    config = TracingConfig.from_environ(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%2Cb,broken",
        }
    )
    installed: list[TracerProvider] = []

    tracing = install_tracing(
        config,
        service_name="llm_worker",
        instance_id="pod-1",
        exporters=[InMemorySpanExporter()],
        install=installed.append,
    )

    assert tracing is not None
    assert installed == [tracing.provider]
    assert isinstance(tracing.provider.sampler, ParentBasedTraceIdRatio)
    assert "0.25" in tracing.provider.sampler.get_description()
    resource = tracing.provider.resource.attributes
    assert resource["service.name"] == "llm_worker"
    assert resource["service.instance.id"] == "pod-1"
    assert resource["deployment.environment"] == "prod"
    assert resource["team"] == "a,b"
    tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OTEL_SERVICE_NAME": "llm-eu"}, "llm-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=llm-us"}, "llm-us"),
        ({}, "llm_worker"),
    ],
)
def test_the_service_name_defaults_to_the_worker_name(
    environ: dict[str, str], expected: str
) -> None:
    config = TracingConfig.from_environ({"OTEL_TRACES_EXPORTER": "console", **environ})

    tracing = install_tracing(
        config, service_name="llm_worker", exporters=[], install=lambda _provider: None
    )

    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == expected
    assert config.sampler is DEFAULT_ON


def test_the_logged_otlp_endpoint_never_shows_its_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = "https://spans:hunter2-pass@otel.test/v1/traces?token=tok-value-1"
    config = TracingConfig.from_environ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})

    with caplog.at_level(logging.INFO, logger="ferryman_runtime.telemetry.tracing"):
        install_tracing(config, service_name="w", exporters=[], install=lambda _provider: None)

    [message] = [r.getMessage() for r in caplog.records if "tracing on" in r.getMessage()]
    assert "otel.test" in message
    assert "hunter2-pass" not in message
    assert "tok-value-1" not in message


def test_the_worker_name_comes_from_the_settings_prefix() -> None:
    assert service_name(LlmWorkerSettings) == "llm_worker"
    assert service_name(McpWorkerSettings) == "mcp_worker"


def test_an_always_off_sampler_is_accepted() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_off"}
    assert TracingConfig.from_environ(environ).sampler is ALWAYS_OFF


# --- the request pipeline and its replies ------------------------------------------------


async def test_the_process_span_continues_the_producers_trace(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()

    record = echo_record(traceparent=TRACEPARENT, tracestate=TRACESTATE, tenant="acme")
    await echo_pipeline(publisher, tracer)(record, 1)

    process = _named(spans, "process requests")
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.is_remote
    assert f"{process.parent.trace_id:032x}" == PRODUCER_TRACE
    assert f"{process.parent.span_id:016x}" == PRODUCER_SPAN
    assert process.status.status_code is StatusCode.UNSET
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "requests",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "g-echo",
        "messaging.message.id": "e1",
        "ferryman.tenant": "acme",
    }


async def test_result_events_carry_the_workers_span_not_the_producers(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()

    await echo_pipeline(publisher, tracer)(
        echo_record(traceparent=TRACEPARENT, tracestate=TRACESTATE), 1
    )

    process = _named(spans, "process requests")
    # RawPublisher knows no configured topics: the topic stays out of the span's name.
    send = _named(spans, "send reply")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent == process.get_span_context()
    assert send.attributes is not None
    assert send.attributes["messaging.destination.name"] == "replies"
    assert send.attributes["cloudevents.event_type"] == "echo.done"
    chunk, done = publisher.on("replies")
    # Progress is sent in the process span, the terminal event in its own send span.
    assert header_value(chunk[3], "ce_traceparent") == _traceparent(process)
    assert header_value(done[3], "ce_traceparent") == _traceparent(send)
    assert header_value(done[3], "ce_tracestate") == TRACESTATE
    assert send.attributes["messaging.message.id"] == header_value(done[3], "ce_id")


async def test_a_failed_request_marks_its_span_as_an_error(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()

    await echo_pipeline(publisher, tracer)(echo_record("fail", traceparent=TRACEPARENT), 1)

    process = _named(spans, "process requests")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "unavailable"
    assert publisher.types("replies") == ["echo.chunk", "echo.failed"]


async def test_a_dead_lettered_request_is_an_error_and_its_reply_joins_the_trace(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()

    await echo_pipeline(publisher, tracer)(
        echo_record(data={"nope": 1}, traceparent=TRACEPARENT), 1
    )

    process = _named(spans, "process requests")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "dead_letter.validation"
    send = _named(spans, "send reply")
    assert send.parent is not None
    assert send.parent == process.get_span_context()
    [(_, _, _, failed)] = publisher.on("replies")
    assert header_value(failed, "ce_type") == "echo.failed"
    assert header_value(failed, "ce_traceparent") == _traceparent(send)
    assert len(publisher.on("requests.dlq")) == 1


async def test_with_tracing_off_replies_echo_the_requests_trace_context() -> None:
    publisher = RawPublisher()

    await echo_pipeline(publisher, trace.NoOpTracer())(
        echo_record(traceparent=TRACEPARENT, tracestate=TRACESTATE), 1
    )

    for _, _, _, headers in publisher.on("replies"):
        assert header_value(headers, "ce_traceparent") == TRACEPARENT
        assert header_value(headers, "ce_tracestate") == TRACESTATE


async def test_with_tracing_off_a_request_without_trace_context_gets_replies_without() -> None:
    publisher = RawPublisher()

    await echo_pipeline(publisher, trace.NoOpTracer())(echo_record(), 1)

    assert publisher.types("replies") == ["echo.chunk", "echo.done"]
    for _, _, _, headers in publisher.on("replies"):
        assert header_value(headers, "ce_traceparent") is None


# --- tool calls and client requests ------------------------------------------------------


async def test_a_tool_call_carries_its_send_span_under_the_current_span(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()
    dispatcher = ToolDispatcher(
        lambda: publisher,  # type: ignore[arg-type, return-value]
        request_topic="mcp.requests",
        reply_topic="loop.results",
        control_topic="mcp.control",
        tracer=tracer,
    )
    call = ToolCallRequest(server="toolbox", tool="echo", arguments={"text": "x"})

    with tracer.start_as_current_span("execute_tool echo") as tool_span:
        await dispatcher.send("tl-1", call, tenant=None, expires_in=5, traceparent=TRACEPARENT)

    send = _named(spans, "send mcp.requests")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == tool_span.get_span_context().span_id
    [(_, _, _, headers)] = publisher.on("mcp.requests")
    assert header_value(headers, "ce_traceparent") == _traceparent(send)


async def test_with_tracing_off_a_tool_call_carries_the_chat_requests_traceparent() -> None:
    publisher = RawPublisher()
    dispatcher = ToolDispatcher(
        lambda: publisher,  # type: ignore[arg-type, return-value]
        request_topic="mcp.requests",
        reply_topic="loop.results",
        control_topic="mcp.control",
        tracer=trace.NoOpTracer(),
    )
    call = ToolCallRequest(server="toolbox", tool="echo", arguments={})

    await dispatcher.send("tl-1", call, tenant=None, expires_in=5, traceparent=TRACEPARENT)

    [(_, _, _, headers)] = publisher.on("mcp.requests")
    assert header_value(headers, "ce_traceparent") == TRACEPARENT


def _client_headers(options: RequestOptions) -> dict[str, str | None]:
    headers, _ = encode_request(
        event_type="echo",
        data={"text": "hi"},
        request_id="c1",
        source="/client",
        reply_topic="replies",
        reply_token=None,
        options=options,
        registry=ReplyRegistry(),
        now=datetime.now(UTC),
    )
    return {name: header_value(headers, name) for name in ("ce_traceparent", "ce_tracestate")}


def test_a_client_request_carries_the_active_span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("send llm.requests") as span:
        headers = _client_headers(RequestOptions())
        explicit = _client_headers(RequestOptions(traceparent=TRACEPARENT))

    assert isinstance(span, ReadableSpan)
    assert headers["ce_traceparent"] == _traceparent(span)
    assert explicit["ce_traceparent"] == TRACEPARENT  # the caller's own wins
    assert _client_headers(RequestOptions())["ce_traceparent"] is None  # no active span
