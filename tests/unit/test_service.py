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
    ChatRequest,
    ErrorCode,
    FerrymanError,
)
from llm_worker.providers import ModelRouter
from llm_worker.providers.mock import MockChatModel
from llm_worker.replies import ReplyStream
from llm_worker.service import ChatJob, ChatService, LlmMetrics
from llm_worker.streaming import Completion, Finish, StreamEvent, TextDelta, ToolCallFragment, fold

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
    router = ModelRouter({"mock": MockChatModel(), **extra}, {"default": "mock/echo"})
    return ChatService(router, LlmMetrics(registry))


def _job(publisher: FakePublisher, model: str = "default", **fields: Any) -> ChatJob:
    request = ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hello big world"}], **fields}
    )
    replies = ReplyStream(
        publisher,  # type: ignore[arg-type]
        topic=REPLY_TOPIC,
        request_id=REQUEST_ID,
        source="/ferryman/test",
        extensions={"tenant": "acme"},
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
    labels = {"alias": "direct", "deployment": "mock/*", "outcome": "completed"}
    assert registry.get_sample_value("llm_worker_requests_total", labels) == 1.0
    assert (
        registry.get_sample_value("llm_worker_stream_chunks_total", {"deployment": "mock/*"}) == 5.0
    )


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
    labels = {"alias": "unknown", "deployment": "none", "outcome": "invalid_request"}
    assert registry.get_sample_value("llm_worker_requests_total", labels) == 1.0


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
            "provider": "scripted",
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
