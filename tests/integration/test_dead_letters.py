"""Poison records land in the DLQ once, byte for byte, and never block their partition."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from ferryman.client import FerrymanClient
from ferryman.codec import encode_binary, encode_structured, header_value
from ferryman.contracts import events as ev
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration

_VALID = {"model": "mock/echo", "messages": [{"role": "user", "content": "after the poison"}]}


def _binary(topics: Topics, request_id: str, data: object, **attrs: object):
    attributes = {
        "id": request_id,
        "type": "ferryman.llm.chat.requested",
        "source": "/tests/poison",
        "replyto": topics.replies,
        "datacontenttype": "application/json",
        **attrs,
    }
    return encode_binary(attributes, data)


async def test_poison_records_are_dead_lettered_once_and_later_records_are_processed(
    worker_factory, kafka_bootstrap: str, topics: Topics, client: FerrymanClient
) -> None:
    ids = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("unknown", "badtype", "expiry")}
    structured_headers, _ = encode_structured(
        {"type": "ferryman.llm.chat.requested", "source": "/x"}, {}
    )
    poison: list[tuple[str, list[tuple[str, bytes]], bytes, str]] = [
        # (name, headers, value, expected dlq-reason)
        ("not-a-cloudevent", [("x-custom", b"\xff\x00raw")], b"\x00\x01garbage", "decode"),
        ("structured-bad-json", structured_headers, b"{not json", "decode"),
        (
            "missing-source",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"m1"),
                ("ce_type", b"t"),
                ("content-type", b"application/json"),
            ],
            b"{}",
            "decode",
        ),
        (
            "unknown-field",
            *_binary(topics, ids["unknown"], {**_VALID, "temprature": 1}),
            "validation",
        ),
        (
            "wrong-type",
            *_binary(topics, ids["badtype"], _VALID, type="ferryman.other"),
            "validation",
        ),
        (
            "bad-expiry",
            *_binary(topics, ids["expiry"], _VALID, expirytime="tomorrow"),
            "validation",
        ),
    ]
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for name, headers, value, _ in poison:
            # All on one partition, ahead of the valid request.
            await producer.send_and_wait(
                topics.requests, value, key=f"k-{name}".encode(), headers=headers, partition=0
            )
    finally:
        await producer.stop()
    completed = await client.chat(_VALID, timeout=30, key=b"k-valid")
    assert completed.content == "You said: after the poison"

    letters = await read_topic(kafka_bootstrap, topics.dlq, until=len(poison))
    by_key = {r.key: r for r in letters}
    assert len(letters) == len(poison)
    for name, headers, value, reason in poison:
        letter = by_key[f"k-{name}".encode()]
        assert letter.value == value
        assert list(letter.headers[: len(headers)]) == list(headers)
        added = dict(letter.headers[len(headers) :])
        assert added[ev.DLQ_ORIGINAL_TOPIC] == topics.requests.encode()
        assert added[ev.DLQ_ORIGINAL_PARTITION] == b"0"
        assert int(added[ev.DLQ_ORIGINAL_OFFSET]) >= 0
        assert added[ev.DLQ_REASON] == reason.encode()
        assert added[ev.DLQ_ERROR_TYPE]
        assert added[ev.DLQ_ERROR_MESSAGE]
        assert added[ev.DLQ_ATTEMPTS] == b"1"
        assert added[ev.DLQ_FAILED_AT].endswith(b"Z")
    # Validation failures with a known reply topic also get a `failed` event.

    def failed_events(records: list[Any]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for r in records:
            if header_value(r.headers, "ce_type") == "ferryman.llm.chat.failed":
                correlation = header_value(r.headers, "ce_correlationid")
                assert correlation is not None, "a failed event without a correlation id"
                found[correlation] = json.loads(r.value)["error"]
        return found

    replies = await read_topic(
        kafka_bootstrap, topics.replies, until=lambda rs: len(failed_events(rs)) >= 3
    )
    failed = failed_events(replies)
    assert set(failed) == set(ids.values())
    assert {e["code"] for e in failed.values()} == {"invalid_request"}
    assert "temprature" in failed[ids["unknown"]]["message"]
    scraped = _samples(worker.metrics())
    dead_lettered = "ferryman_messages_dead_lettered_total"
    for reason in ("decode", "validation"):
        assert scraped[dead_lettered, (("reason", reason), ("service", "llm_worker"))] == 3.0
    sent = "messaging_client_sent_messages_total"
    to_dlq = (("messaging_destination_name", topics.dlq), ("outcome", "ok"))
    assert scraped[sent, (*to_dlq, ("service", "llm_worker"))] == len(poison)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape's samples by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
