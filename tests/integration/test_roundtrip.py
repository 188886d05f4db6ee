"""Requests in, chunks and one `completed` out, through the real Kafka and the worker process."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from ferryman.client import FerrymanClient
from ferryman.codec import encode_structured, header_value
from ferryman.contracts import ChatChunk, ChatCompleted
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration


def _request(model: str, text: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_binary_request_streams_ordered_chunks_then_one_completed(
    worker_factory, client: FerrymanClient
) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()

    events = [
        e
        async for e in client.chat_stream(_request("mock/echo", "the quick brown fox"), timeout=30)
    ]

    chunks = [e for e in events if isinstance(e, ChatChunk)]
    completed = events[-1]
    assert isinstance(completed, ChatCompleted)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta.content or "" for c in chunks) == completed.content
    assert completed.content == "You said: the quick brown fox"
    assert completed.chunk_count == len(chunks) == 6
    assert (completed.provider, completed.model, completed.finish_reason) == (
        "mock",
        "echo",
        "stop",
    )


async def test_structured_request_from_a_plain_kafka_producer_gets_its_result(
    worker_factory, kafka_bootstrap: str, topics: Topics, client: FerrymanClient
) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    request_id = str(uuid.uuid4())
    headers, value = encode_structured(
        {
            "id": request_id,
            "type": "ferryman.llm.chat.requested",
            "source": "/tests/structured",
            "replyto": topics.replies,
            "datacontenttype": "application/json",
        },
        _request("mock/echo", "structured mode"),
    )
    # The binding allows ce_ headers next to a structured value; the mode follows content-type.
    headers.append(("ce_type", b"something.else"))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.requests, value, key=b"k", headers=headers)
    finally:
        await producer.stop()

    records = await read_topic(kafka_bootstrap, topics.replies, until=5)
    mine = [r for r in records if header_value(r.headers, "ce_correlationid") == request_id]
    types = [header_value(r.headers, "ce_type") for r in mine]
    assert types == ["ferryman.llm.chat.chunk"] * 4 + ["ferryman.llm.chat.completed"]
    assert all(r.key == request_id.encode() for r in mine)
    sources = [header_value(r.headers, "ce_source") or "" for r in mine]
    assert all(source.startswith("/ferryman/llm-worker/") for source in sources)
    assert json.loads(mine[-1].value)["content"] == "You said: structured mode"


async def test_openai_provider_streams_text_and_tool_calls_through_kafka(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.scenarios["gpt-tools"] = Scenario(
        tool_calls=[
            {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
            {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
        ]
    )
    worker = worker_factory(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test-secret")
    worker.start()
    await worker.wait_ready()
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("get_weather", "get_time")
    ]

    text, tool = await asyncio.gather(
        client.chat(_request("openai/gpt-4o-mini", "hello there"), timeout=30),
        client.chat(_request("openai/gpt-tools", "weather?", tools=tools), timeout=30),
    )
    streamed_off = await client.chat(
        _request("openai/gpt-4o-mini", "once", stream=False), timeout=30
    )

    assert text.content == "Echo: hello there"
    assert (text.usage.input_tokens, text.usage.output_tokens) == (2, 3)
    assert tool.finish_reason == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in tool.tool_calls] == [
        ("call_0", "get_weather", {"city": "Paris", "unit": "C"}),
        ("call_1", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert (streamed_off.content, streamed_off.chunk_count) == ("Echo: once", 0)
    sent = fake_openai.chat_requests()
    assert all(r.headers["Authorization"] == "Bearer sk-test-secret" for r in sent)
    assert {r.body["stream"] for r in sent} == {True, False}
    assert "sk-test-secret" not in worker.log_path.read_text()


async def test_a_hand_made_binary_record_like_kcat_sends_gets_chunks_and_a_result(
    worker_factory, kafka_bootstrap: str, topics: Topics
) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"kcat-1"),
        ("ce_source", b"/my/app"),
        ("ce_type", b"ferryman.llm.chat.requested"),
        ("content-type", b"application/json"),
    ]
    value = b'{"model":"mock/echo","messages":[{"role":"user","content":"hi from kcat"}]}'
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.requests, value, key=b"kcat-1", headers=headers)
    finally:
        await producer.stop()

    def finished(records: list) -> bool:
        return any(
            header_value(r.headers, "ce_type") == "ferryman.llm.chat.completed" for r in records
        )

    records = await read_topic(kafka_bootstrap, topics.replies, until=finished)
    assert [(header_value(r.headers, "ce_type") or "").rsplit(".", 1)[-1] for r in records] == [
        "chunk",
        "chunk",
        "chunk",
        "chunk",
        "chunk",
        "completed",
    ]
    assert {r.key for r in records} == {b"kcat-1"}
    assert json.loads(records[-1].value)["content"] == "You said: hi from kcat"
