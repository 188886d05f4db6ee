"""ChatRequestHandler: dead letters for bugs and poison, dedupe, no commit on publish failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from ferryman.codec import encode_binary, header_value
from ferryman.contracts import ChatRequest
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.metrics import ConsumerMetrics
from llm_worker.handler import ChatRequestHandler
from llm_worker.providers import ModelRouter
from llm_worker.providers.mock import MockChatModel
from llm_worker.service import ChatService, LlmMetrics
from llm_worker.streaming import Completion, StreamEvent, TextDelta


class RawPublisher:
    """Records (topic, key, value, headers); fails DLQ sends while `dlq_down` is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.dlq_down = False

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()):
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.dlq_down and topic.endswith(".dlq"):
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, key, value, list(headers)))
            future.set_result(None)
        return future

    async def send_and_wait(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ):
        await (await self.send(topic, value, key=key, headers=headers))

    def on(
        self, topic: str
    ) -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        return [s for s in self.sent if s[0] == topic]


class BuggyModel:
    """A provider adapter with a bug: raises a plain exception mid-stream."""

    provider = "buggy"

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="partial")
        raise KeyError("oops")

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        raise KeyError("oops")

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


def _handler(publisher: RawPublisher) -> ChatRequestHandler:
    registry = CollectorRegistry()
    router = ModelRouter({"mock": MockChatModel(), "buggy": BuggyModel()}, {})
    return ChatRequestHandler(
        service=ChatService(router, LlmMetrics(registry)),
        publisher=publisher,  # type: ignore[arg-type]
        recent=RecentRequests(window=60, max_entries=100),
        metrics=ConsumerMetrics(registry, "t"),
        source="/test/worker",
        default_reply_topic="replies",
        dlq_topic="requests.dlq",
    )


def _record(model: str, request_id: str = "r1", offset: int = 7, value: bytes | None = None):
    headers, body = encode_binary(
        {
            "id": request_id,
            "type": "ferryman.llm.chat.requested",
            "source": "/p",
            "datacontenttype": "application/json",
        },
        json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )
    return ConsumerRecord(
        topic="requests",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=body if value is None else value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(body),
        headers=tuple(headers),
    )


async def test_a_handler_bug_dead_letters_the_record_and_publishes_failed_internal() -> None:
    publisher = RawPublisher()

    await _handler(publisher)(_record("buggy/x"), 1)

    [letter] = publisher.on("requests.dlq")
    assert header_value(letter[3], "dlq-reason") == "handler"
    assert header_value(letter[3], "dlq-error-type") == "KeyError"
    types = [header_value(h, "ce_type") for _, _, _, h in publisher.on("replies")]
    assert types == ["ferryman.llm.chat.chunk", "ferryman.llm.chat.failed"]
    failed = json.loads(publisher.on("replies")[-1][2] or b"")
    assert failed["error"]["code"] == "internal"


async def test_the_same_request_twice_is_executed_once() -> None:
    publisher = RawPublisher()
    handler = _handler(publisher)

    await handler(_record("mock/echo", offset=1), 1)
    await handler(_record("mock/echo", offset=2), 1)

    terminal = [
        h
        for _, _, _, h in publisher.on("replies")
        if header_value(h, "ce_type") != "ferryman.llm.chat.chunk"
    ]
    assert len(terminal) == 1


async def test_a_dlq_outage_raises_so_the_offset_stays_uncommitted_then_parks_once() -> None:
    publisher = RawPublisher()
    handler = _handler(publisher)
    publisher.dlq_down = True
    poison = _record("mock/echo", value=b"{not json")

    with pytest.raises(KafkaTimeoutError):
        await handler(poison, 1)
    publisher.dlq_down = False
    await handler(poison, 2)

    [letter] = publisher.on("requests.dlq")
    assert letter[2] == b"{not json"
    assert header_value(letter[3], "dlq-attempts") == "2"
    assert header_value(letter[3], "dlq-reason") == "validation"
