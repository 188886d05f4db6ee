"""Delivery guarantees of the worker process: crashes, duplicates, expiry, shutdown, DLQ outages."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ferryman.client import ChatFailedError, FerrymanClient
from ferryman.codec import encode_binary, header_value
from ferryman.contracts import ChatChunk, ChatCompleted, ChatRestarted
from ferryman.replies import RunRestarted
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration


def _request(text: str, model: str = "mock/echo") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            out[p] = await consumer.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await consumer.stop()


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def test_sigkill_mid_stream_then_restart_loses_no_request(
    worker_factory, client: FerrymanClient
) -> None:
    first = worker_factory(LLM_WORKER_MOCK_TOKEN_DELAY_MS="100")
    first.start()
    await first.wait_ready()
    texts = [f"request number {i} with several words to stream slowly" for i in range(12)]
    seen_chunk = asyncio.Event()
    results: dict[int, ChatCompleted] = {}

    async def run(i: int) -> None:
        chunks: list[ChatChunk] = []
        async for event in client.chat_stream(_request(texts[i]), timeout=90):
            if isinstance(event, RunRestarted | ChatRestarted):
                chunks.clear()  # the rerun after the crash: start the answer over
            elif isinstance(event, ChatChunk):
                chunks.append(event)
                seen_chunk.set()
            elif isinstance(event, ChatCompleted):
                assert [c.index for c in chunks] == list(range(len(chunks)))
                assert "".join(c.delta.content or "" for c in chunks) == event.content
                results[i] = event

    tasks = [asyncio.create_task(run(i)) for i in range(len(texts))]
    await asyncio.wait_for(seen_chunk.wait(), 30)
    first.kill()  # SIGKILL while streams are in progress
    assert not all(t.done() for t in tasks)
    second = worker_factory(LLM_WORKER_MOCK_TOKEN_DELAY_MS="1")
    second.start()
    await asyncio.wait_for(asyncio.gather(*tasks), 90)
    assert sorted(results) == list(range(len(texts)))
    assert all(results[i].content == f"You said: {texts[i]}" for i in results)


async def test_a_rerun_after_sigkill_is_never_spliced_onto_the_first_runs_answer(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.scenarios["gpt-vary"] = Scenario(token_delay=0.1, numbered=True)
    first = worker_factory(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    first.start()
    await first.wait_ready()
    texts = [f"question {i} asked with enough words to take a while" for i in range(6)]
    seen_chunk = asyncio.Event()
    shown: dict[int, str] = {}
    abandoned: dict[int, str] = {}
    results: dict[int, ChatCompleted] = {}

    async def run(i: int) -> None:
        text = ""
        request = _request(texts[i], model="openai/gpt-vary")
        async for event in client.chat_stream(request, timeout=90):
            if isinstance(event, RunRestarted):
                abandoned[i], text = text, ""
            elif isinstance(event, ChatChunk):
                text += event.delta.content or ""
                seen_chunk.set()
            elif isinstance(event, ChatCompleted):
                shown[i], results[i] = text, event

    tasks = [asyncio.create_task(run(i)) for i in range(len(texts))]
    await asyncio.wait_for(seen_chunk.wait(), 30)
    first.kill()
    second = worker_factory(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    second.start()
    await asyncio.wait_for(asyncio.gather(*tasks), 90)

    assert sorted(results) == list(range(len(texts)))
    for i, completed in results.items():
        assert shown[i] == completed.content  # what the reader shows is one run's answer
    assert abandoned, "no request was rerun, so the test proved nothing"
    for i, partial in abandoned.items():
        # the rerun answered differently (another call), and none of the first run shows
        assert partial.split(":")[0] != results[i].content.split(":")[0]


async def test_duplicate_request_id_is_executed_once(
    worker_factory,
    kafka_bootstrap: str,
    topics: Topics,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.scenarios["gpt-slow"] = Scenario(token_delay=0.05)
    worker = worker_factory(OPENAI_BASE_URL=fake_openai.base_url)
    worker.start()
    await worker.wait_ready()
    request_id = str(uuid.uuid4())

    def terminals(records: list[Any]) -> list[Any]:
        return [
            r
            for r in records
            if header_value(r.headers, "ce_correlationid") == request_id
            and header_value(r.headers, "ce_type") != "ferryman.llm.chat.chunk"
        ]

    def is_terminal_present(records: list[Any]) -> bool:
        return bool(terminals(records))

    headers, value = encode_binary(
        {
            "id": request_id,
            "type": "ferryman.llm.chat.requested",
            "source": "/tests/dup",
            "replyto": topics.replies,
            "datacontenttype": "application/json",
        },
        _request("once only please", model="openai/gpt-slow"),
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # Two partitions: the copy is in flight while the first runs; the third copy comes after.
        await producer.send_and_wait(topics.requests, value, headers=headers, partition=0)
        await producer.send_and_wait(topics.requests, value, headers=headers, partition=1)
        await _wait_for(
            lambda: 'duplicate_skipped_total{service="llm_worker"} 1.0' in worker.metrics(),
            30,
            "a skip",
        )
        await read_topic(kafka_bootstrap, topics.replies, until=is_terminal_present, timeout=30)
        await producer.send_and_wait(topics.requests, value, headers=headers, partition=2)
    finally:
        await producer.stop()
    await _wait_for(
        lambda: 'duplicate_skipped_total{service="llm_worker"} 2.0' in worker.metrics(),
        30,
        "two skips",
    )
    records = await read_topic(kafka_bootstrap, topics.replies, until=is_terminal_present)
    assert len(terminals(records)) == 1
    assert len(fake_openai.chat_requests()) == 1


async def test_expired_request_is_not_executed(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    worker = worker_factory(OPENAI_BASE_URL=fake_openai.base_url)
    worker.start()
    await worker.wait_ready()
    expired = datetime.now(UTC) - timedelta(seconds=1)

    with pytest.raises(ChatFailedError) as failure:
        await client.chat(
            _request("too late", model="openai/gpt-x"), expires_at=expired, timeout=30
        )
    fresh = await client.chat(
        _request("in time", model="openai/gpt-x"),
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        timeout=30,
    )

    assert failure.value.error.code == "expired"
    assert failure.value.error.retryable is False
    assert fresh.content == "Echo: in time"
    assert [r.body["messages"][0]["content"] for r in fake_openai.chat_requests()] == ["in time"]


async def test_sigterm_finishes_in_flight_work_commits_and_exits(
    worker_factory, kafka_bootstrap: str, topics: Topics, client: FerrymanClient
) -> None:
    worker = worker_factory(LLM_WORKER_MOCK_TOKEN_DELAY_MS="200", LLM_WORKER_GRACE_PERIOD="30")
    worker.start()
    await worker.wait_ready()
    started: set[int] = set()

    async def run(i: int) -> ChatCompleted:
        async for event in client.chat_stream(_request(f"graceful {i} a b c d e"), timeout=60):
            if isinstance(event, ChatChunk):
                started.add(i)
            elif isinstance(event, ChatCompleted):
                return event
        raise AssertionError("no terminal event")

    tasks = [asyncio.create_task(run(i)) for i in range(6)]
    await _wait_for(lambda: len(started) == 6, 30, "all six streams to start")
    worker.signal(signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    code = await worker.wait_exit(60)

    assert code == 0
    assert [r.content for r in results] == [f"You said: graceful {i} a b c d e" for i in range(6)]
    committed = await _committed(kafka_bootstrap, topics.group, topics.requests, 3)
    assert committed == await _end_offsets(kafka_bootstrap, topics.requests, 3)


async def test_dead_letter_outage_keeps_the_offset_until_the_dlq_accepts_it(
    worker_factory, kafka_bootstrap: str, topics: Topics, client: FerrymanClient
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # The DLQ refuses records above 200 bytes: dead-lettering the big poison record fails.
        await admin.delete_topics([topics.dlq])
        await _wait_for_topic_gone(admin, topics.dlq)
        await admin.create_topics(
            [NewTopic(topics.dlq, 1, 1, topic_configs={"max.message.bytes": "200"})]
        )
        worker = worker_factory(LLM_WORKER_CREATE_TOPICS="false")
        worker.start()
        await worker.wait_ready()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            poison = await producer.send_and_wait(
                topics.requests, b"x" * 500, key=b"poison", partition=0
            )
        finally:
            await producer.stop()
        after = await client.chat(_request("behind the poison"), timeout=30, key=b"p0")
        assert after.content == "You said: behind the poison"
        await _wait_for(
            lambda: (
                "ferryman_messages_retried_total{" in worker.metrics()
                and "messaging_destination_name=" in worker.metrics()
            ),
            30,
            "a retry",
        )
        committed = await _committed(kafka_bootstrap, topics.group, topics.requests, 3)
        assert committed[0] <= poison.offset

        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.dlq, {"max.message.bytes": "1048576"})]
        )
        letters = await read_topic(kafka_bootstrap, topics.dlq, until=1, timeout=60)
        assert [(r.key, r.value) for r in letters] == [(b"poison", b"x" * 500)]
        assert int(dict(letters[0].headers)["dlq-attempts"]) > 1
        ends = await _end_offsets(kafka_bootstrap, topics.requests, 3)

        async def caught_up() -> bool:
            return await _committed(kafka_bootstrap, topics.group, topics.requests, 3) == ends

        deadline = time.monotonic() + 30
        while not await caught_up():
            assert time.monotonic() < deadline, "offsets never committed past the poison record"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    letters = await read_topic(kafka_bootstrap, topics.dlq, until=1, timeout=5)
    assert len(letters) == 1


async def _wait_for_topic_gone(admin: AIOKafkaAdminClient, topic: str) -> None:
    deadline = time.monotonic() + 30
    while topic in await admin.list_topics():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
