"""What the LLM worker tells operators about a request: the `chat {model}` and
`execute_tool` spans, the GenAI and request metrics, quota rejections, and the one usage
event per finished request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from ferryman.codec import encode_binary
from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.mcp import MCP_TOOL_CALL_COMPLETED, ToolAnnotations, ToolEntry
from ferryman.contracts.usage import UsageEvent
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.cancellation import CancelBoard
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.topic_follower import FollowedRecord
from ferryman_runtime.upstreams.quotas import QuotaBook
from llm_worker.chat.job import ChatJob, Resilience
from llm_worker.chat.service import ChatService
from llm_worker.chat.streaming import (
    Completion,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
    UsageReport,
    fold,
)
from llm_worker.metrics import LlmMetrics
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import RoutingConfig
from llm_worker.routing.table import build_table
from llm_worker.tool_loop.dispatch import ToolDispatcher
from llm_worker.tool_loop.journal import LoopJournal
from llm_worker.tool_loop.loop import ToolLoop
from llm_worker.tool_loop.offer import function_name
from llm_worker.tool_loop.tool_runs import ToolRunner
from tests.unit.llm_worker.recording_replies import RecordingReplies

PROMPT = "a secret prompt about the launch"
MCP_REQUESTS = "mcp.requests"


class Spans:
    """A tracer whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("test")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


class UsageSink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def record(self, event: UsageEvent) -> None:
        self.events.append(event)


class ScriptedModel:
    """Streams one scripted answer per call (the last one repeats); `error` fails every call."""

    provider = "scripted"

    def __init__(
        self, answers: list[list[StreamEvent]], error: FerrymanError | None = None
    ) -> None:
        self._answers = answers
        self._error = error
        self.calls = 0

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        answer = self._answers[min(self.calls, len(self._answers) - 1)]
        self.calls += 1
        if self._error is not None:
            raise self._error
        for event in answer:
            await asyncio.sleep(0)
            yield event

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return ["any"]

    async def aclose(self) -> None:
        return None


def _text(text: str, tokens: tuple[int, int] = (7, 2)) -> list[StreamEvent]:
    return [
        TextDelta(text=text),
        UsageReport(input_tokens=tokens[0], output_tokens=tokens[1]),
        Finish(reason="stop", model="served-model-1"),
    ]


def _request(model: str, **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": PROMPT}], **fields}
    )


def _service(registry: CollectorRegistry, spans: Spans, usage: UsageSink, **kw: Any) -> ChatService:
    providers = {"mock": MockChatModel(), **kw.pop("providers", {})}
    return ChatService(
        ModelResolver(providers, {"default": "mock/echo"}),
        LlmMetrics(registry, **kw.pop("metrics", {})),
        usage=usage,
        tracer=spans.tracer,
        **kw,
    )


def _attribute_values(spans: list[ReadableSpan]) -> list[str]:
    return [str(value) for span in spans for value in (span.attributes or {}).values()]


async def test_a_provider_call_is_one_client_span_with_genai_attributes_and_no_content() -> None:
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()
    replies = RecordingReplies()
    request = _request("mock/echo", stream=True, metadata={"user_id": "u-7"})

    await _service(registry, spans, usage).execute(
        ChatJob(request=request, replies=replies, tenant="acme", key=("/app", "req-1"))  # type: ignore[arg-type]
    )

    [span] = spans.finished()
    assert span.name == "chat echo"
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mock",
        "gen_ai.request.model": "echo",
        "ferryman.upstream": "mock/*",
        "gen_ai.response.model": "echo",
        "gen_ai.usage.input_tokens": 6,
        "gen_ai.usage.output_tokens": 8,
        "gen_ai.response.finish_reasons": ("stop",),
    }
    assert span.status.status_code is StatusCode.UNSET
    assert not any("launch" in value for value in _attribute_values([span]))
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "mock"}
    call = {**genai, "gen_ai_request_model": "mock/*", "upstream": "mock/*"}
    assert (
        registry.get_sample_value(
            "gen_ai_client_operation_duration_seconds_count", {**call, "error_type": ""}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value("gen_ai_client_operation_time_to_first_chunk_seconds_count", call)
        == 1.0
    )
    tokens = {**genai, "gen_ai_request_model": "mock/*"}
    assert (
        registry.get_sample_value(
            "gen_ai_client_token_usage_sum", {**tokens, "gen_ai_token_type": "output"}
        )
        == 8.0
    )
    assert (
        registry.get_sample_value(
            "ferryman_requests_total",
            {"operation": "chat", "target": "direct", "outcome": "completed"},
        )
        == 1.0
    )
    [event] = usage.events
    assert event.model_dump(exclude={"latency_seconds", "finished_at"}) == {
        "schema_version": 1, "request_id": "req-1", "service": "llm_worker", "tenant": "acme",
        "user": "u-7", "operation": "chat", "target": "direct", "model": "mock/echo",
        "tool": None, "input_tokens": 6, "output_tokens": 8, "cost_usd": None,
        "price_table_version": None, "outcome": "completed", "steps": 0, "tools": [], "bytes": 0,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_long_tokens": 0,
        "cache_storage_token_hours": 0, "response_cache": None,
    }  # fmt: skip
    assert event.latency_seconds >= 0
    assert event.finished_at.tzinfo is not None


async def test_a_non_streamed_call_has_no_time_to_first_chunk() -> None:
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()

    await _service(registry, spans, usage).execute(
        ChatJob(request=_request("mock/echo", stream=False), replies=RecordingReplies())  # type: ignore[arg-type]
    )

    names = {s.name for family in registry.collect() for s in family.samples}
    assert "gen_ai_client_operation_duration_seconds_count" in names
    assert "gen_ai_client_operation_time_to_first_chunk_seconds_count" not in names


async def test_a_failed_call_sets_error_type_on_span_and_metric_and_the_failure_is_recorded() -> (
    None
):
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()
    down = FerrymanError(ErrorCode.UNAVAILABLE, f"upstream said: {PROMPT}", retryable=False)
    model = ScriptedModel([_text("never")], error=down)
    replies = RecordingReplies()

    await _service(registry, spans, usage, providers={"scripted": model}).execute(
        ChatJob(request=_request("scripted/m1"), replies=replies, tenant="acme")  # type: ignore[arg-type]
    )

    assert replies.types() == ["ferryman.llm.chat.failed"]
    [span] = spans.finished()
    assert span.name == "chat m1"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "unavailable"
    assert (span.attributes or {})["error.type"] == "unavailable"
    assert not span.events  # no exception event quoting the provider
    assert not any("launch" in value for value in _attribute_values([span]))
    labels = {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": "scripted",
        "gen_ai_request_model": "scripted/*", "upstream": "scripted/*",
        "error_type": "unavailable",
    }  # fmt: skip
    assert (
        registry.get_sample_value("gen_ai_client_operation_duration_seconds_count", labels) == 1.0
    )
    [event] = usage.events
    assert (event.outcome, event.model, event.input_tokens, event.output_tokens) == (
        "unavailable", None, 0, 0,
    )  # fmt: skip


class _Hanging:
    """A provider whose stream starts, then waits until cancelled."""

    provider = "hang"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        self.started.set()
        await asyncio.Event().wait()
        yield TextDelta(text="never")

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


async def test_a_cancelled_request_records_cancelled_usage_and_a_cancelled_call() -> None:
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()
    hanging, cancels = _Hanging(), CancelBoard(60)
    service = _service(registry, spans, usage, providers={"hang": hanging}, cancels=cancels)
    job = ChatJob(request=_request("hang/m"), replies=RecordingReplies(), key=("/a", "c-1"))  # type: ignore[arg-type]

    running = asyncio.create_task(service.execute(job))
    await asyncio.wait_for(hanging.started.wait(), 5)
    assert cancels.cancel(("/a", "c-1"), "user stopped")
    await asyncio.wait_for(running, 5)

    [event] = usage.events
    assert (event.outcome, event.request_id, event.target) == ("cancelled", "c-1", "direct")
    [span] = spans.finished()
    assert (span.attributes or {})["error.type"] == "cancelled"
    assert (
        registry.get_sample_value(
            "ferryman_requests_total",
            {"operation": "chat", "target": "direct", "outcome": "cancelled"},
        )
        == 1.0
    )


def test_semconv_provider_names_and_configured_models_label_by_name() -> None:
    from llm_worker.chat.call_telemetry import genai_provider

    metrics = LlmMetrics(CollectorRegistry(), configured_models=lambda: {"gpt-4o"})

    assert [genai_provider(p) for p in ("openai", "azure", "gemini", "anthropic")] == [
        "openai", "azure.ai.openai", "gcp.gemini", "anthropic",
    ]  # fmt: skip
    assert metrics.model_label("openai", "gpt-4o", direct=True) == "gpt-4o"
    assert metrics.model_label("openai", "gpt-x-9", direct=True) == "openai/*"
    assert metrics.model_label("openai", "my-deployment-model", direct=False) == (
        "my-deployment-model"
    )


def test_server_address_comes_from_the_provider_client_when_it_knows_it() -> None:
    from llm_worker.chat.call_telemetry import server_address
    from llm_worker.providers.azure import AzureChatModel
    from llm_worker.providers.config import AzureOpenAIConfig
    from llm_worker.providers.openai import OpenAIChatModel

    client = openai.AsyncOpenAI(api_key="k", base_url="http://llm.internal:8080/v1")
    azure = AzureChatModel(
        AzureOpenAIConfig.model_validate(
            {
                "api_key": "k",
                "endpoint": "https://main.openai.azure.com",
                "deployments": {"eu": {"deployment": "gpt", "endpoint": "https://eu.example.com"}},
            }
        )
    )

    assert server_address(OpenAIChatModel(client), "m") == "llm.internal"
    assert server_address(azure, "eu") == "eu.example.com"
    assert server_address(azure, "other") == "main.openai.azure.com"
    assert server_address(MockChatModel(), "echo") is None


def _routing(**tenants: Any) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {
            "deployments": {"main": {"provider": "mock", "model": "echo", "limits": {"rpm": 1}}},
            "routes": {"chat": {"deployments": ["main"]}},
            "tenants": tenants,
        }
    )


async def test_requests_refused_by_our_own_quotas_count_by_scope_and_bounded_tenant() -> None:
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()
    loop = asyncio.get_running_loop()
    clock = loop.time
    config = _routing(acme={"requests": 1, "window": 600}, **{"*": {"requests": 100}})
    tenants = LabelBudget(lambda: {"acme"}, max_dynamic=1)
    service = _service(
        registry, spans, usage,
        metrics={"tenants": tenants},
        resilience=Resilience(deployment_quotas=QuotaBook(clock), tenant_quotas=QuotaBook(clock)),
        clock=clock,
    )  # fmt: skip
    resolver = ModelResolver({"mock": MockChatModel()}, {})
    service.apply_routing(build_table(config, resolver, lambda _: None))

    async def send(tenant: str) -> str:
        replies = RecordingReplies()
        job = ChatJob(
            request=_request("chat"),
            replies=replies,  # type: ignore[arg-type]
            tenant=tenant,
            deadline=clock() + 0.5,
        )
        await service.execute(job)
        return replies.types()[-1].rsplit(".", 1)[-1]

    outcomes = [await send(t) for t in ("acme", "acme", "t-1", "t-2", "t-3")]

    # acme: served, then over its own quota; the others: the deployment's rpm of 1 is spent.
    assert outcomes == ["completed", "failed", "failed", "failed", "failed"]
    rejected = {
        (s.labels["scope"], s.labels["tenant"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "ferryman_quota_rejections_total"
    }
    assert rejected == {
        ("tenant", "acme"): 1.0, ("deployment", "t-1"): 1.0, ("deployment", "other"): 2.0,
    }  # fmt: skip
    waits = {
        s.labels["reason"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "llm_worker_quota_waits_total"
    }
    assert set(waits) <= {"tenant", "quota"}  # one reason per wait, never a `/`-joined pair
    assert [e.outcome for e in usage.events] == ["completed"] + ["rate_limited"] * 4


# --- the tool loop ---------------------------------------------------------------------


class _Catalog:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ready.set()

    def record(self, server: str) -> None:
        return None

    async def sync(self, timeout: float) -> None:
        return None

    def tools_for(self, tenant: str | None, server: str, patterns: Any) -> list[ToolEntry]:
        return [
            ToolEntry(
                name="echo",
                description="echoes",
                input_schema={"type": "object"},
                annotations=ToolAnnotations(),
                definition_hash="0" * 64,
            )
        ]


class _McpEcho:
    """The worker's publisher: steps go to the journal; each tool call is answered at once,
    as the mcp_worker would, and the span current while it was published is kept."""

    def __init__(self) -> None:
        self.journal: LoopJournal | None = None
        self.publishing_spans: list[SpanContext] = []

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()):
        if topic == MCP_REQUESTS:
            assert self.journal is not None
            assert key is not None
            self.publishing_spans.append(trace.get_current_span().get_span_context())
            data = {
                "server": "box", "tool": "echo", "content": [{"type": "text", "text": "ok"}],
                "protocol_version": "2025-11-25", "definition_hash": "0" * 64, "duration_ms": 1,
            }  # fmt: skip
            attributes = {
                "id": "r", "type": MCP_TOOL_CALL_COMPLETED, "source": "/ferryman/mcp-worker/b",
                "correlationid": key.decode(),
            }  # fmt: skip
            reply_headers, reply = encode_binary(attributes, json.dumps(data).encode())
            stamp = int(asyncio.get_running_loop().time() * 1000)
            self.journal.apply(FollowedRecord(None, reply, reply_headers, 0, 0, stamp))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_a_tool_loop_spans_each_tool_call_and_records_steps_and_tools() -> None:
    registry, spans, usage = CollectorRegistry(), Spans(), UsageSink()
    loop_clock = asyncio.get_running_loop().time
    publisher = _McpEcho()
    journal = LoopJournal(
        KafkaConnection.coerce("127.0.0.1:1"), "loop", lambda: publisher,  # type: ignore[arg-type,return-value]
        source="/ferryman/llm-worker/t", window=3600, memory=1 << 20, client_id="t",
        clock=lambda: loop_clock(),
    )  # fmt: skip
    journal.ready.set()
    journal.follower.ready.set()
    publisher.journal = journal
    metrics = LlmMetrics(registry)
    dispatcher = ToolDispatcher(
        lambda: publisher,  # type: ignore[arg-type,return-value]
        request_topic=MCP_REQUESTS, reply_topic="loop", control_topic="control",
    )  # fmt: skip
    runner = ToolRunner(
        dispatcher, journal, result_max_chars=1000, metrics=metrics, tracer=spans.tracer
    )
    name = function_name("box", "echo")
    model = ScriptedModel(
        [
            [ToolCallFragment(index=0, id="call-1", name=name, arguments="{}"),
             UsageReport(input_tokens=10, output_tokens=3), Finish(reason="tool_calls")],
            _text("done", (20, 4)),
        ]
    )  # fmt: skip
    service = ChatService(
        ModelResolver({"scripted": model}, {}),
        metrics,
        tool_loop=ToolLoop(_Catalog(), journal, runner, metrics, timeout=60),
        usage=usage,
        tracer=spans.tracer,
    )
    request = _request(
        "scripted/m1",
        tools=[{"type": "mcp", "server": "box"}],
        tool_execution={"mode": "auto"},
        metadata={"user_id": "u-1"},
    )

    # `follower.sync` would read Kafka: the journal here is fed by the fake publisher alone.
    journal.follower.sync = lambda timeout: asyncio.sleep(0)  # type: ignore[method-assign]
    await service.execute(ChatJob(request=request, replies=RecordingReplies(), key=("/a", "q")))  # type: ignore[arg-type]

    finished = spans.finished()
    [tool_span] = [s for s in finished if s.name.startswith("execute_tool")]
    assert tool_span.name == "execute_tool box/echo"
    assert tool_span.kind is SpanKind.INTERNAL
    assert dict(tool_span.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "gen_ai.tool.call.id": "call-1",
        "ferryman.mcp.server": "box",
    }
    assert publisher.publishing_spans == [tool_span.context]  # the MCP request's context
    assert [s.name for s in finished if s.name.startswith("chat")] == ["chat m1", "chat m1"]
    assert (
        registry.get_sample_value(
            "gen_ai_execute_tool_duration_seconds_count", {"server": "box", "error_type": ""}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "llm_worker_tool_calls_total", {"server": "box", "outcome": "completed"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "ferryman_requests_total",
            {"operation": "tool_loop", "target": "direct", "outcome": "completed"},
        )
        == 1.0
    )
    [event] = usage.events
    assert (event.operation, event.user, event.steps, event.tools) == (
        "tool_loop", "u-1", 2, ["box/echo"],
    )  # fmt: skip
    assert (event.input_tokens, event.output_tokens) == (30, 7)
    assert event.model == "scripted/served-model-1"


@pytest.mark.parametrize(
    ("reasons", "counted"),
    [({"quota", "cooldown"}, "cooldown"), ({"circuit_open", "quota"}, "circuit_open"),
     ({"quota"}, "quota"), ({"tenant"}, "tenant")],
)  # fmt: skip
def test_a_quota_wait_counts_one_reason(reasons: set[str], counted: str) -> None:
    registry = CollectorRegistry()

    assert LlmMetrics(registry).quota_wait(reasons) == counted
    assert registry.get_sample_value("llm_worker_quota_waits_total", {"reason": counted}) == 1.0
