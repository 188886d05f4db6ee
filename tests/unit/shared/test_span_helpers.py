"""The kit's span helpers: one `error.type` rule (`error_type_of`), `traced_span` never
recording an exception's text, PRODUCER span names that leave producer-chosen reply topics
out, and a reply stream that decides once whether tracing is on."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ferryman.codec import header_value
from ferryman.contracts import ErrorCode, ErrorInfo, FerrymanError
from ferryman_runtime.replies import ReplyStream
from ferryman_runtime.sent_messages import (
    CountingPublisher,
    KnowsConfiguredTopics,
    SentMessages,
    configured_topics,
)
from ferryman_runtime.telemetry.spans import error_type_of, traced_span
from llm_worker.settings import LlmWorkerSettings
from tests.fakes.publisher import RawPublisher

SECRET = "sk-live-0123456789abcdef"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Text(BaseModel):
    text: str


class Failed(BaseModel):
    error: ErrorInfo


class LeakyError(Exception):
    """An exception whose message quotes a secret, as an upstream's might."""


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test")


def _only(spans: InMemorySpanExporter) -> ReadableSpan:
    [span] = spans.get_finished_spans()
    return span


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FerrymanError(ErrorCode.UNAVAILABLE, f"upstream said {SECRET}"), "unavailable"),
        (asyncio.CancelledError(SECRET), "cancelled"),
        (LeakyError(SECRET), "LeakyError"),
        (KeyError(SECRET), "KeyError"),
    ],
)
def test_error_type_is_the_code_cancelled_or_the_class_never_the_text(
    error: BaseException, expected: str
) -> None:
    assert error_type_of(error) == expected


def test_a_failed_block_marks_its_span_without_recording_the_exception(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    with (
        pytest.raises(LeakyError),
        traced_span(tracer, "work", kind=SpanKind.CLIENT, attributes={"a": "b"}),
    ):
        raise LeakyError(f"api_key={SECRET}")

    span = _only(spans)
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "LeakyError"
    assert dict(span.attributes or {}) == {"a": "b", "error.type": "LeakyError"}
    assert span.events == ()  # no exception event, no stack trace
    assert SECRET not in span.to_json()


def test_a_block_that_completes_leaves_the_status_unset_and_honours_the_parent(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    with tracer.start_as_current_span("outer") as outer:
        pass
    with traced_span(tracer, "inner", context=trace.set_span_in_context(outer)) as inner:
        assert trace.get_current_span() is inner

    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["inner"].status.status_code is StatusCode.UNSET
    assert finished["inner"].kind is SpanKind.INTERNAL
    assert finished["inner"].parent == outer.get_span_context()


async def test_a_cancelled_block_is_marked_cancelled(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    entered = asyncio.Event()

    async def work() -> None:
        with traced_span(tracer, "waits"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)

    span = _only(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "cancelled"


class WorkerPublisher(RawPublisher):
    """A recording publisher that knows the worker's configured topics, as the worker's does."""

    def __init__(self, sent: SentMessages) -> None:
        super().__init__()
        self._sent = sent

    def is_configured(self, topic: str) -> bool:
        return self._sent.is_configured(topic)


def _stream(publisher: object, topic: str, tracer: trace.Tracer) -> ReplyStream:
    return ReplyStream(
        publisher,  # type: ignore[arg-type]
        topic=topic,
        request_id="r-1",
        source="/test",
        extensions={"traceparent": TRACEPARENT},
        failed_type="t.failed",
        failed_model=Failed,
        tracer=tracer,
    )


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("t.llm.results", "send t.llm.results"),  # the worker's default reply topic
        ("acme-7f3a.replies", "send reply"),  # chosen by a producer
    ],
)
async def test_only_a_configured_topic_names_the_send_span(
    spans: InMemorySpanExporter, tracer: trace.Tracer, topic: str, name: str
) -> None:
    settings = LlmWorkerSettings(default_reply_topic="t.llm.results")
    publisher = WorkerPublisher(SentMessages(CollectorRegistry(), configured_topics(settings)))

    with tracer.start_as_current_span("process t.llm.requests"):
        await _stream(publisher, topic, tracer).finish("t.done", Text(text="hi"))

    [send] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert send.name == name
    assert (send.attributes or {})["messaging.destination.name"] == topic


def test_the_workers_publisher_knows_its_configured_topics() -> None:
    settings = LlmWorkerSettings(default_reply_topic="t.llm.results")
    sent = SentMessages(CollectorRegistry(), configured_topics(settings))
    publisher = CountingPublisher("127.0.0.1:9", sent=sent, client_id="test")

    assert isinstance(publisher, KnowsConfiguredTopics)
    assert publisher.is_configured("t.llm.results")
    assert publisher.is_configured(settings.tool_loop_topic)
    assert not publisher.is_configured("acme-7f3a.replies")


async def test_a_stream_made_with_no_span_current_traces_nothing_and_echoes_the_request(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()
    stream = _stream(publisher, "replies", tracer)  # tracing off: no valid span current

    await stream.emit("t.chunk", Text(text="a"))
    await stream.finish("t.done", Text(text="b"))

    assert spans.get_finished_spans() == ()
    assert [header_value(h, "ce_traceparent") for *_, h in publisher.on("replies")] == [
        TRACEPARENT,
        TRACEPARENT,
    ]


async def test_a_traced_stream_gives_each_event_the_span_current_when_it_is_sent(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    publisher = RawPublisher()

    with tracer.start_as_current_span("process requests") as process:
        stream = _stream(publisher, "replies", tracer)
        await stream.emit("t.chunk", Text(text="a"))
        with tracer.start_as_current_span("chat model") as call:
            await stream.emit("t.chunk", Text(text="b"))
        await stream.emit("t.chunk", Text(text="c"))

    ids = [
        header_value(h, "ce_traceparent").split("-")[2]  # type: ignore[union-attr]
        for *_, h in publisher.on("replies")
    ]
    span_ids = [f"{s.get_span_context().span_id:016x}" for s in (process, call, process)]
    assert ids == span_ids
