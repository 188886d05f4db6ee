"""Fuzz: thousands of hostile records through the real worker; no partition is blocked and
every record is accounted for (completed, failed, or dead-lettered)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ferryman.codec import encode_binary, header_value
from ferryman.topics import ensure_topics
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, list[tuple[str, bytes]], bytes]
"""(key, headers, value)"""
Kind = Callable[[random.Random, int], tuple[Record, str]]
"""Makes the n-th hostile record and says how it must end: `dlq` or `failed` (a reply only)."""

PARTITIONS = 6
HOSTILE = 3000
VALID = 200


def _request(topics: Topics, request_id: str, data: Any = None, **attributes: Any) -> Record:
    data = (
        data
        if data is not None
        else {
            "model": "mock/echo",
            "messages": [{"role": "user", "content": f"valid {request_id}"}],
        }
    )
    attrs = {
        "id": request_id,
        "type": "ferryman.llm.chat.requested",
        "source": "/tests/fuzz",
        "replyto": topics.replies,
        "datacontenttype": "application/json",
        **attributes,
    }
    headers, value = encode_binary(attrs, json.dumps(data).encode())
    return request_id.encode(), headers, value


def _structured(document: dict[str, Any]) -> Record:
    value = json.dumps(document).encode()  # ensure_ascii: lone surrogates travel as \\ud800
    return None, [("content-type", b"application/cloudevents+json")], value


def _hostile_kinds(topics: Topics) -> list[Kind]:
    def garbage(rng: random.Random, n: int) -> tuple[Record, str]:
        return (None, [], rng.randbytes(rng.randint(0, 200))), "dlq"

    def no_id(rng: random.Random, n: int) -> tuple[Record, str]:
        key, headers, value = _request(topics, f"h{n}")
        return (key, [(k, v) for k, v in headers if k != "ce_id"], value), "dlq"

    def structured_no_id(rng: random.Random, n: int) -> tuple[Record, str]:
        return _structured({"specversion": "1.0", "type": "t", "source": "s", "data": {}}), "dlq"

    def bad_reply_topic(rng: random.Random, n: int) -> tuple[Record, str]:
        topic = rng.choice(
            ["__consumer_offsets", "__transaction_state", ".", "..", topics.requests, "x" * 300]
        )
        key, headers, value = _request(topics, f"h{n}")
        name = rng.choice(["ce_replyto", "CE_REPLYTO"])
        headers = [(k, v) for k, v in headers if k != "ce_replyto"] + [(name, topic.encode())]
        if rng.random() < 0.3:  # duplicated header, the hostile one last
            headers = [("ce_replyto", topics.replies.encode()), *headers]
        return (key, headers, value), "dlq"

    def structured_bad_reply(rng: random.Random, n: int) -> tuple[Record, str]:
        return _structured(
            {
                "specversion": "1.0",
                "id": f"h{n}",
                "type": "ferryman.llm.chat.requested",
                "source": "s",
                "replyto": "__consumer_offsets",
                "data": {},
            }
        ), "dlq"

    def huge_id(rng: random.Random, n: int) -> tuple[Record, str]:
        data = {"model": "mock/echo", "messages": [{"role": "user", "content": "big id"}]}
        _, headers, value = _request(topics, f"h{n}-" + "x" * 600_000, data)
        return (f"h{n}".encode(), headers, value), "dlq"

    def lone_surrogate(rng: random.Random, n: int) -> tuple[Record, str]:
        field = rng.choice(["id", "tenant", "source"])
        document = {
            "specversion": "1.0",
            "id": f"h{n}",
            "type": "ferryman.llm.chat.requested",
            "source": "s",
            "replyto": topics.replies,
            "data": {"model": "mock/echo", "messages": [{"role": "user", "content": "x"}]},
        }
        document[field] = "\ud800" + str(n)
        return _structured(document), "dlq"

    def wrong_type(rng: random.Random, n: int) -> tuple[Record, str]:
        kind = rng.choice(["x", "ferryman.llm.chat.chunk"])
        return _request(topics, f"h{n}", type=kind), "dlq"

    def invalid_data(rng: random.Random, n: int) -> tuple[Record, str]:
        data = rng.choice([[], "text", {"model": 1}, {"messages": []}, {"model": "m", "x": 1}])
        return _request(topics, f"h{n}", data=data), "dlq"

    def surrogate_content(rng: random.Random, n: int) -> tuple[Record, str]:
        data = {"model": "mock/echo", "messages": [{"role": "user", "content": "a\ud800b"}]}
        return _request(topics, f"h{n}", data=data), "dlq"

    def bad_expiry(rng: random.Random, n: int) -> tuple[Record, str]:
        if rng.random() < 0.5:
            return _request(topics, f"h{n}", expirytime="soon"), "dlq"
        return _request(topics, f"h{n}", expirytime="2020-01-01T00:00:00Z"), "failed"

    return [
        garbage,
        no_id,
        structured_no_id,
        bad_reply_topic,
        structured_bad_reply,
        huge_id,
        lone_surrogate,
        wrong_type,
        invalid_data,
        surrogate_content,
        bad_expiry,
    ]


async def _committed_everything(bootstrap: str, topics: Topics, timeout: float) -> dict[int, int]:
    """Wait until the group committed the end of every partition; return what is left."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await admin.start()
    await producer.start()
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.requests, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(topics.group)
            left = {
                tp.partition: ends[tp] - (committed[tp].offset if tp in committed else 0)
                for tp in tps
            }
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


async def test_thousands_of_hostile_records_never_block_a_partition(
    worker_factory, kafka_bootstrap: str, topics: Topics
) -> None:
    await ensure_topics(
        kafka_bootstrap,
        [topics.requests, topics.dlq, topics.replies],
        partitions=PARTITIONS,
        replication_factor=1,
    )
    worker = worker_factory(LLM_WORKER_TOPIC_PARTITIONS=str(PARTITIONS))
    worker.start()
    await worker.wait_ready()
    rng = random.Random(8)
    kinds = _hostile_kinds(topics)
    records: list[tuple[Record, str]] = []
    for n in range(HOSTILE):
        records.append(rng.choice(kinds)(rng, n))
        if n % (HOSTILE // VALID) == 0:
            records.append((_request(topics, f"v{n}"), "completed"))
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, max_request_size=2_000_000, linger_ms=5
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                topics.requests, value, key=key, headers=headers, partition=index % PARTITIONS
            )
            for index, ((key, headers, value), _) in enumerate(records)
        ]
        where = [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()

    left = await _committed_everything(kafka_bootstrap, topics, timeout=180)
    assert left == dict.fromkeys(range(PARTITIONS), 0), f"uncommitted records per partition: {left}"

    expected_dead = {where[i] for i, (_, outcome) in enumerate(records) if outcome == "dlq"}
    letters = await read_topic(kafka_bootstrap, topics.dlq, until=len(expected_dead), timeout=60)
    dead = [
        (
            int(header_value(r.headers, "dlq-original-partition") or -1),
            int(header_value(r.headers, "dlq-original-offset") or -1),
        )
        for r in letters
    ]
    assert sorted(dead) == sorted(expected_dead)  # each poison record parked exactly once

    def request_id(record: Record) -> str:
        return header_value(record[1], "ce_id") or ""

    answered = {
        request_id(record): outcome
        for record, outcome in records
        if outcome in ("completed", "failed")
    }
    replies = await read_topic(
        kafka_bootstrap,
        topics.replies,
        until=lambda rs: _terminal(rs).keys() >= answered.keys(),
        timeout=60,
    )
    terminal = _terminal(replies)
    assert {rid: terminal[rid] for rid in answered} == answered
    health = worker.health()
    assert health is not None
    assert health["ready"] is True


def _terminal(replies: list[Any]) -> dict[str, str]:
    """Request id → `completed` or `failed`, from the terminal reply events."""
    outcomes: dict[str, str] = {}
    for record in replies:
        kind = (header_value(record.headers, "ce_type") or "").rsplit(".", 1)[-1]
        if kind in ("completed", "failed"):
            outcomes[header_value(record.headers, "ce_correlationid") or ""] = kind
    return outcomes
