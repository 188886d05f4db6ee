"""The client against the real Kafka, answered by a scripted worker in the test: what it
creates, which partitions it reads, the request extensions it sends, and the run id and
reply token rules on real records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from ferryman.client import FerrymanClient, RunRestarted
from ferryman.codec import IncomingEvent, decode_event, encode_event
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    ChatChunk,
    ChatCompleted,
    ChunkDelta,
    Latency,
    Usage,
)
from ferryman.contracts import events as ev
from ferryman.publisher import KafkaPublisher
from ferryman.reply_reader import partition_for_key
from ferryman.topics import ensure_topics
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration

REQUEST = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}
RUN_A, RUN_B = "1700000000000-aaaaaaaaaaaa", "1700000001000-bbbbbbbbbbbb"
DONE = ChatCompleted(
    content="b",
    tool_calls=[],
    finish_reason="stop",
    usage=Usage(input_tokens=1, output_tokens=1),
    provider="mock",
    model="echo",
    chunk_count=1,
    latency_ms=Latency(total=1.0),
)


class Reply:
    """Publishes reply events the way a worker does (keyed by request id, binary mode)."""

    def __init__(self, publisher: KafkaPublisher, request: IncomingEvent) -> None:
        self.publisher = publisher
        self.request = request

    async def send(
        self,
        event_type: str,
        payload: BaseModel,
        *,
        run_id: str | None,
        token: str | None = "echo",
        partition: int | None = None,
    ) -> None:
        extensions: dict[str, str] = {} if run_id is None else {ev.EXT_RUN_ID: run_id}
        echoed = self.request.extension(ev.EXT_REPLY_TOKEN) if token == "echo" else token
        if echoed is not None:
            extensions[ev.EXT_REPLY_TOKEN] = echoed
        headers = encode_event(
            event_type=event_type,
            source="/test-worker",
            data=b"",
            correlation_id=self.request.id,
            extensions=extensions,
        )
        topic = self.request.extension(ev.EXT_REPLY_TO)
        assert topic is not None
        value = payload.model_dump_json(exclude_none=True).encode()
        key = self.request.id.encode()
        if partition is None:
            await self.publisher.send_and_wait(topic, value, key=key, headers=headers)
        else:  # a record the partitioner would not have put there
            producer = self.publisher._producer  # pyright: ignore[reportPrivateUsage]
            await producer.send_and_wait(
                topic, value, key=key, headers=headers, partition=partition
            )


Script = Callable[[Reply], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_worker(
    bootstrap: str, request_topic: str, script: Script
) -> AsyncIterator[list[IncomingEvent]]:
    """Answer every request on `request_topic` with `script`; yield the requests seen."""
    seen: list[IncomingEvent] = []
    publisher = KafkaPublisher(bootstrap, client_id="test-worker")
    consumer = AIOKafkaConsumer(
        request_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await publisher.start()
    await consumer.start()

    async def serve() -> None:
        async for record in consumer:
            request = decode_event(record.headers, record.value)
            seen.append(request)
            await script(Reply(publisher, request))

    task = asyncio.create_task(serve())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        await publisher.stop()


def chunk(index: int, text: str) -> ChatChunk:
    return ChatChunk(index=index, delta=ChunkDelta(content=text))


async def test_the_reply_topic_is_not_created_unless_asked(
    kafka_bootstrap: str, topics: Topics
) -> None:
    absent = FerrymanClient(kafka_bootstrap, reply_topic=topics.replies, metadata_timeout=2)
    with pytest.raises(LookupError, match="does not exist; create it"):
        await absent.__aenter__()

    async with FerrymanClient(
        kafka_bootstrap, reply_topic=topics.replies, create_reply_topic=True
    ) as client:
        assert client.new_request_id()
    records = await read_topic(kafka_bootstrap, topics.replies, until=0, timeout=10)
    assert records == []


async def test_a_request_carries_its_extensions_and_a_secret_reply_token(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await ensure_topics(
        kafka_bootstrap, [topics.requests, topics.replies], partitions=2, replication_factor=1
    )
    now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def answer(reply: Reply) -> None:
        await reply.send(LLM_CHAT_COMPLETED, DONE, run_id=RUN_A)

    async with (
        scripted_worker(kafka_bootstrap, topics.requests, answer) as seen,
        FerrymanClient(
            kafka_bootstrap,
            request_topic=topics.requests,
            reply_topic=topics.replies,
            clock=lambda: now,
        ) as client,
    ):
        await client.chat(
            REQUEST, timeout=30, tenant="acme", traceparent=traceparent, expires_in=90
        )
        await client.chat(REQUEST, timeout=30, request_id="req-2")

    first, second = seen
    assert first.extension(ev.EXT_TENANT) == "acme"
    assert first.extension(ev.EXT_TRACEPARENT) == traceparent
    assert first.expiry() == datetime(2031, 5, 6, 7, 9, 39, tzinfo=UTC)
    assert first.extension(ev.EXT_REPLY_TO) == topics.replies
    tokens = {first.extension(ev.EXT_REPLY_TOKEN), second.extension(ev.EXT_REPLY_TOKEN)}
    assert None not in tokens
    assert len(tokens) == 2
    assert second.id == "req-2"
    assert second.extension(ev.EXT_TENANT) is None


async def test_a_rerun_replaces_the_first_and_forged_replies_are_ignored(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await ensure_topics(
        kafka_bootstrap, [topics.requests, topics.replies], partitions=2, replication_factor=1
    )
    forged = DONE.model_copy(update={"content": "forged"})

    async def crash_then_rerun(reply: Reply) -> None:
        await reply.send(LLM_CHAT_CHUNK, chunk(0, "x"), run_id=RUN_A)
        await reply.send(LLM_CHAT_COMPLETED, forged, run_id=RUN_B, token="guessed")
        await reply.send(LLM_CHAT_COMPLETED, forged, run_id=RUN_B, token=None)
        await reply.send(LLM_CHAT_CHUNK, chunk(0, "a"), run_id=RUN_B)
        await reply.send(LLM_CHAT_CHUNK, chunk(1, "late"), run_id=RUN_A)
        await reply.send(LLM_CHAT_COMPLETED, forged, run_id=RUN_A)
        await reply.send(LLM_CHAT_CHUNK, chunk(1, "b"), run_id=RUN_B)
        await reply.send(LLM_CHAT_COMPLETED, DONE, run_id=RUN_B)

    async with (
        scripted_worker(kafka_bootstrap, topics.requests, crash_then_rerun),
        FerrymanClient(
            kafka_bootstrap, request_topic=topics.requests, reply_topic=topics.replies
        ) as client,
    ):
        events = [event async for event in client.chat_stream(REQUEST, timeout=30)]

    assert events == [
        chunk(0, "x"),
        RunRestarted(run_id=RUN_B, previous_run_id=RUN_A, discarded_chunks=1),
        chunk(0, "a"),
        chunk(1, "b"),
        DONE,
    ]


async def test_clients_sharing_a_reply_topic_each_read_only_their_partition(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await ensure_topics(kafka_bootstrap, [topics.requests], partitions=2, replication_factor=1)
    await ensure_topics(kafka_bootstrap, [topics.replies], partitions=4, replication_factor=1)

    async def answer(reply: Reply) -> None:
        wrong = (partition_for_key(reply.request.id.encode(), 4) + 1) % 4
        impostor = DONE.model_copy(update={"content": "elsewhere"})
        await reply.send(LLM_CHAT_COMPLETED, impostor, run_id=RUN_A, partition=wrong)
        await reply.send(LLM_CHAT_COMPLETED, DONE, run_id=RUN_A)

    def client(partition: int) -> FerrymanClient:
        return FerrymanClient(
            kafka_bootstrap,
            request_topic=topics.requests,
            reply_topic=topics.replies,
            reply_partition=partition,
        )

    async with (
        scripted_worker(kafka_bootstrap, topics.requests, answer) as seen,
        client(1) as one,
        client(3) as three,
    ):
        results = await asyncio.gather(
            *(c.chat(REQUEST, timeout=30) for c in (one, three, one, three))
        )
        with pytest.raises(ValueError, match="does not hash to reply partition 1"):
            await one.chat(REQUEST, timeout=30, request_id=three.new_request_id())

    assert results == [DONE] * 4
    partitions = sorted(partition_for_key(request.id.encode(), 4) for request in seen)
    assert partitions == [1, 1, 3, 3]
