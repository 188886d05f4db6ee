"""ChatService and ReplyStream: chunks in order, then exactly one terminal event per request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from ferryman.codec import decode_event
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_RESTARTED,
    ChatRequest,
    ErrorCode,
    FerrymanError,
)
from ferryman_runtime.resilience import RetryPolicy
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics, Resilience
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.chat.streaming import (
    Completion,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
    fold,
)
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import RoutingConfig
from llm_worker.routing.table import build_table
from tests.fakes.publisher import chat_replies
from tests.unit.llm_worker.recording_replies import RecordingReplies

REQUEST_ID = "req-42"
REPLY_TOPIC = "test.replies"


@dataclass(frozen=True)
class Published:
    """One record handed to the fake publisher, decoded as a CloudEvent."""

    topic: str
    key: bytes | None
    type: str
    correlation_id: str | None
    tenant: str | None
    data: dict[str, Any]


class FakePublisher:
    """Records what is sent; futures resolve at once, or fail with `fail_with`."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.records: list[Published] = []
        self._fail_with = fail_with

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> asyncio.Future[None]:
        event = decode_event(list(headers), value)
        self.records.append(
            Published(
                topic=topic,
                key=key,
                type=event.type,
                correlation_id=event.extension("correlationid"),
                tenant=event.extension("tenant"),
                data=json.loads(value or b"null"),
            )
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._fail_with is None:
            future.set_result(None)
        else:
            future.set_exception(self._fail_with)
        return future

    async def send_and_wait(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> None:
        await (await self.send(topic, value, key=key, headers=headers))

    def of_type(self, event_type: str) -> list[Published]:
        return [r for r in self.records if r.type == event_type]


class ScriptedModel:
    """A provider that streams the given events, then raises `error` if set."""

    provider = "scripted"

    def __init__(self, events: list[StreamEvent], error: FerrymanError | None = None) -> None:
        self._events = events
        self._error = error

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        for event in self._events:
            await asyncio.sleep(0)
            yield event
        if self._error is not None:
            raise self._error

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return ["any"]

    async def aclose(self) -> None:
        return None


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _service(registry: CollectorRegistry, **extra: Any) -> ChatService:
    resolver = ModelResolver({"mock": MockChatModel(), **extra}, {"default": "mock/echo"})
    return ChatService(resolver, LlmMetrics(registry))


def _job(publisher: FakePublisher, model: str = "default", **fields: Any) -> ChatJob:
    request = ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hello big world"}], **fields}
    )
    replies = chat_replies(
        publisher, topic=REPLY_TOPIC, request_id=REQUEST_ID, extensions={"tenant": "acme"}
    )
    return ChatJob(request=request, replies=replies)


async def test_a_streamed_request_publishes_indexed_chunks_then_one_completed(
    registry: CollectorRegistry,
) -> None:
    publisher = FakePublisher()
    job = _job(publisher)

    await _service(registry).execute(job)

    *chunks, completed = publisher.records
    assert len(chunks) == 5
    assert [c.type for c in chunks] == [LLM_CHAT_CHUNK] * 5
    assert [c.data["index"] for c in chunks] == [0, 1, 2, 3, 4]
    assert all(
        set(c.data) == {"index", "delta", "attempt"} and set(c.data["delta"]) == {"content"}
        for c in chunks
    )
    for record in publisher.records:
        assert (record.topic, record.key) == (REPLY_TOPIC, REQUEST_ID.encode())
        assert record.correlation_id == REQUEST_ID
        assert record.tenant == "acme"
    assert completed.type == LLM_CHAT_COMPLETED
    content = "".join(c.data["delta"]["content"] for c in chunks)
    assert content == "You said: hello big world"
    assert completed.data["content"] == content
    assert completed.data["chunk_count"] == 5 == job.replies.chunk_count
    assert (completed.data["provider"], completed.data["model"]) == ("mock", "echo")
    assert completed.data["finish_reason"] == "stop"
    assert completed.data["usage"] == {"input_tokens": 3, "output_tokens": 5}
    assert completed.data["latency_ms"]["first_token"] <= completed.data["latency_ms"]["total"]
    labels = {"operation": "chat", "target": "direct", "outcome": "completed"}
    assert registry.get_sample_value("ferryman_requests_total", labels) == 1.0
    chunks = registry.get_sample_value("llm_worker_stream_chunks_total", {"upstream": "mock/*"})
    assert chunks == 5.0


async def test_a_non_streamed_request_publishes_only_the_completed_event(
    registry: CollectorRegistry,
) -> None:
    publisher = FakePublisher()

    await _service(registry).execute(_job(publisher, model="mock/echo", stream=False))

    [completed] = publisher.records
    assert completed.type == LLM_CHAT_COMPLETED
    assert completed.data["content"] == "You said: hello big world"
    assert completed.data["chunk_count"] == 0
    assert "first_token" not in completed.data["latency_ms"]


@pytest.mark.parametrize("model", ["nope/x", "no-such-alias", "mock/"])
async def test_an_unresolvable_model_publishes_exactly_one_invalid_request_failure(
    registry: CollectorRegistry, model: str
) -> None:
    publisher = FakePublisher()

    await _service(registry).execute(_job(publisher, model=model))

    [failed] = publisher.records
    assert failed.type == LLM_CHAT_FAILED
    assert failed.data["error"]["code"] == "invalid_request"
    assert failed.data["error"]["retryable"] is False
    assert failed.key == REQUEST_ID.encode()
    labels = {"operation": "chat", "target": "unknown", "outcome": "invalid_request"}
    assert registry.get_sample_value("ferryman_requests_total", labels) == 1.0


async def test_a_provider_failing_midstream_publishes_its_chunks_then_one_failed_event(
    registry: CollectorRegistry,
) -> None:
    error = FerrymanError(ErrorCode.RATE_LIMITED, "slow down", status=429)
    model = ScriptedModel([TextDelta(text="a"), TextDelta(text=" b")], error=error)
    publisher = FakePublisher()

    await _service(registry, scripted=model).execute(_job(publisher, model="scripted/any"))

    assert [r.type for r in publisher.records] == [LLM_CHAT_CHUNK, LLM_CHAT_CHUNK, LLM_CHAT_FAILED]
    assert publisher.records[-1].data == {
        "error": {
            "code": "rate_limited",
            "message": "slow down",
            "retryable": True,
            "upstream": "scripted",
            "status": 429,
        }
    }
    assert not publisher.of_type(LLM_CHAT_COMPLETED)


async def test_a_stream_that_ends_without_finishing_is_reported_as_unavailable(
    registry: CollectorRegistry,
) -> None:
    model = ScriptedModel([TextDelta(text="cut")])
    publisher = FakePublisher()

    await _service(registry, scripted=model).execute(_job(publisher, model="scripted/any"))

    assert [r.type for r in publisher.records] == [LLM_CHAT_CHUNK, LLM_CHAT_FAILED]
    assert publisher.records[-1].data["error"]["code"] == "unavailable"
    assert publisher.records[-1].data["error"]["retryable"] is True


async def test_tool_call_fragments_are_published_as_tool_call_chunks(
    registry: CollectorRegistry,
) -> None:
    model = ScriptedModel(
        [
            ToolCallFragment(index=0, id="call_1", name="lookup"),
            ToolCallFragment(index=0, arguments='{"q": 1}'),
            Finish(reason="tool_calls"),
        ]
    )
    publisher = FakePublisher()

    await _service(registry, scripted=model).execute(_job(publisher, model="scripted/any"))

    chunk0, chunk1, completed = publisher.records
    assert chunk0.data == {
        "index": 0,
        "delta": {"tool_calls": [{"index": 0, "id": "call_1", "name": "lookup"}]},
        "attempt": 1,
    }
    assert chunk1.data == {
        "index": 1,
        "delta": {"tool_calls": [{"index": 0, "arguments": '{"q": 1}'}]},
        "attempt": 1,
    }
    assert completed.data["tool_calls"] == [
        {"id": "call_1", "name": "lookup", "arguments": '{"q": 1}'}
    ]
    assert completed.data["finish_reason"] == "tool_calls"
    assert completed.data["model"] == "any"
    assert completed.data["content"] == ""


@pytest.mark.parametrize("model", ["default", "nope/x"], ids=["completed", "failed"])
async def test_unacknowledged_replies_make_execute_raise(
    registry: CollectorRegistry, model: str
) -> None:
    publisher = FakePublisher(fail_with=KafkaTimeoutError())

    with pytest.raises(KafkaTimeoutError):
        await _service(registry).execute(_job(publisher, model=model))

    assert publisher.records, "the terminal event was attempted"
    assert publisher.records[-1].type in (LLM_CHAT_COMPLETED, LLM_CHAT_FAILED)


class ManualClock:
    """The service's clock in the tests below: it moves only when a provider says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Plan:
    """One call of a `PlannedModel`: `tokens` tokens, `silence` seconds on the clock, then
    `error` (None: the answer finishes)."""

    tokens: int = 3
    silence: float = 0.0
    error: FerrymanError | None = None


class PlannedModel:
    """A provider whose calls follow `plans` in turn (the last one repeats)."""

    def __init__(self, provider: str, clock: ManualClock, *plans: Plan) -> None:
        self.provider, self._clock, self._plans = provider, clock, plans
        self.calls = 0

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        plan = self._plans[min(self.calls, len(self._plans) - 1)]
        self.calls += 1
        for i in range(plan.tokens):
            await asyncio.sleep(0)
            yield TextDelta(text=f"{self.provider}{i} ")
        self._clock.now += plan.silence
        if plan.error is not None:
            raise plan.error
        yield Finish(reason="stop")

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return [self.provider]

    async def aclose(self) -> None:
        return None


def _connection_lost(provider: str) -> FerrymanError:
    return FerrymanError(ErrorCode.UNAVAILABLE, f"cannot reach {provider}: Connection error")


def _routed(clock: ManualClock, *models: PlannedModel, per_deployment: int = 3) -> ChatService:
    """Route `chat` to the first model's deployment, falling back to the others in turn."""
    resolver = ModelResolver({m.provider: m for m in models}, {})
    names = [m.provider for m in models]
    config = RoutingConfig.model_validate(
        {
            "deployments": {name: {"provider": name, "model": "m"} for name in names},
            "routes": {
                "chat": {
                    "deployments": names[:1],
                    "fallbacks": names[1:],
                    "retry": {"per_deployment": per_deployment},
                },
                **{name: {"deployments": [name]} for name in names[1:]},
            },
        }
    )
    service = ChatService(
        resolver,
        LlmMetrics(CollectorRegistry()),
        timeouts=StreamTimeouts(first_token=30, idle=30, total=None),
        resilience=Resilience(retry=RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)),
        clock=clock,
    )
    service.apply_routing(build_table(config, resolver, lambda _: None))
    return service


async def _run(service: ChatService, deadline: float | None = None) -> RecordingReplies:
    replies = RecordingReplies()
    request = ChatRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    async with asyncio.timeout(5):
        await service.execute(ChatJob(request, replies, deadline=deadline))  # type: ignore[arg-type]
    return replies


def _restarts(replies: RecordingReplies) -> list[tuple[int, str, int, str]]:
    return [
        (r["attempt"], r["deployment"], r["discarded_chunks"], r["reason"]["code"])
        for r in replies.of_type(LLM_CHAT_RESTARTED)
    ]


async def test_a_stream_cut_mid_answer_restarts_on_the_fallback_not_on_the_same_deployment() -> (
    None
):
    clock = ManualClock()
    primary = PlannedModel("primary", clock, Plan(tokens=2, error=_connection_lost("primary")))
    spare = PlannedModel("spare", clock, Plan(tokens=3))

    replies = await _run(_routed(clock, primary, spare, per_deployment=3))

    assert (primary.calls, spare.calls) == (1, 1)
    assert replies.types() == [LLM_CHAT_CHUNK] * 2 + [LLM_CHAT_RESTARTED] + [LLM_CHAT_CHUNK] * 3 + [
        LLM_CHAT_COMPLETED
    ]
    assert _restarts(replies) == [(2, "spare", 2, "unavailable")]
    [restarted] = replies.of_type(LLM_CHAT_RESTARTED)
    assert restarted["reason"]["message"] == (
        "primary stream was cut after 2 chunks (cannot reach primary: Connection error)"
    )
    completed = replies.events[-1][1]
    assert (completed["deployment"], completed["stream_attempt"]) == ("spare", 2)


async def test_when_the_fallback_fails_too_the_restart_comes_back_to_the_first_deployment() -> None:
    clock = ManualClock()
    primary = PlannedModel(
        "primary", clock, Plan(tokens=2, error=_connection_lost("primary")), Plan(tokens=3)
    )
    spare = PlannedModel("spare", clock, Plan(tokens=1, error=_connection_lost("spare")))

    replies = await _run(_routed(clock, primary, spare))

    assert (primary.calls, spare.calls) == (2, 1)
    assert _restarts(replies) == [(2, "spare", 2, "unavailable"), (3, "primary", 1, "unavailable")]
    completed = replies.events[-1][1]
    assert (completed["deployment"], completed["stream_attempt"]) == ("primary", 3)
    attempts = [(a["deployment"], a.get("error_code")) for a in completed["attempts"]]
    assert attempts == [("primary", "unavailable"), ("spare", "unavailable"), ("primary", None)]


async def test_a_stream_silent_then_closed_is_a_timeout_that_fails_over_and_is_not_retried() -> (
    None
):
    clock = ManualClock()
    primary = PlannedModel(
        "primary", clock, Plan(tokens=2, silence=20.0, error=_connection_lost("primary"))
    )
    spare = PlannedModel("spare", clock, Plan(tokens=3))

    replies = await _run(_routed(clock, primary, spare, per_deployment=3))

    assert (primary.calls, spare.calls) == (1, 1)
    assert _restarts(replies) == [(2, "spare", 2, "timeout")]
    [restarted] = replies.of_type(LLM_CHAT_RESTARTED)
    assert "went silent for 20.0s after 2 chunks, then was closed" in restarted["reason"]["message"]
    assert replies.events[-1][1]["deployment"] == "spare"


async def test_a_stream_silent_then_closed_on_the_only_deployment_fails_as_a_timeout() -> None:
    clock = ManualClock()
    only = PlannedModel(
        "only", clock, Plan(tokens=0, silence=16.0, error=_connection_lost("only")), Plan()
    )

    replies = await _run(_routed(clock, only, per_deployment=3))

    assert only.calls == 1
    [(kind, data)] = replies.events
    assert kind == LLM_CHAT_FAILED
    assert (data["error"]["code"], data["error"]["retryable"]) == ("timeout", True)
    assert "went silent for 16.0s after 0 chunks, then was closed" in data["error"]["message"]


async def test_no_call_starts_once_the_request_deadline_has_passed() -> None:
    clock = ManualClock()
    deadline = clock.now + 10.0
    primary = PlannedModel(
        "primary", clock, Plan(tokens=0, silence=11.0, error=_over_capacity("primary"))
    )
    spare = PlannedModel("spare", clock, Plan(tokens=3))

    replies = await _run(_routed(clock, primary, spare), deadline=deadline)

    assert (primary.calls, spare.calls) == (1, 0)
    [(kind, data)] = replies.events
    assert kind == LLM_CHAT_FAILED
    assert (data["error"]["code"], data["error"]["retryable"]) == ("timeout", True)
    assert data["error"]["message"] == (
        "the request's deadline passed before spare could be called"
        " (after unavailable: primary returned 503)"
    )


def _over_capacity(provider: str) -> FerrymanError:
    return FerrymanError(ErrorCode.UNAVAILABLE, f"{provider} returned 503", status=503)
