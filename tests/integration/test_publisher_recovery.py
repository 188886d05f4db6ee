"""One failed send never poisons a partition: the publisher recovers without a restart.

Each trigger leaves aiokafka's idempotent producer with a sequence gap (a numbered batch
that never reached the log); before the fix every later send to that partition failed
with `OutOfOrderSequenceNumber` until the process restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ferryman.codec import header_value
from ferryman.contracts import events
from ferryman.publisher import BatchRefused, KafkaPublisher, RecordTooLarge, is_record_too_large
from ferryman.topics import ensure_topics
from ferryman_runtime.dead_letter import DeadLetterReason, publish_dead_letter
from tests.integration.conftest import read_topic
from tests.kafka_brokers import PrivateBroker, private_broker

pytestmark = pytest.mark.integration

LIMIT = 20_000  # above aiokafka's 16 KiB batch size, so an oversize record travels alone


async def _create_topic(bootstrap: str, name: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()
    await ensure_topics(bootstrap, [name], partitions=1, replication_factor=1)


async def _set_max_message_bytes(bootstrap: str, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)}
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _publisher(bootstrap: str, **connection: object):
    publisher = KafkaPublisher(bootstrap, client_id="recovery-test", connection=connection)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


async def _until_send_outcome(
    publisher: KafkaPublisher, topic: str, value: bytes, *, rejected: bool, timeout: float = 30.0
) -> None:
    """Send `value` until the broker rejects it as too large (or accepts it): a config
    change reaches the log asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await publisher.send_and_wait(topic, value, key=b"k")
            outcome_rejected = False
        except RecordTooLarge:
            outcome_rejected = True
        if outcome_rejected == rejected:
            return
        assert time.monotonic() < deadline, f"broker never {'rejected' if rejected else 'took'} it"
        await asyncio.sleep(0.05)


async def test_a_too_large_record_fails_alone_and_does_not_poison_its_partition(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"t-{unique}.small"
    await _create_topic(kafka_bootstrap, topic, **{"max.message.bytes": str(LIMIT)})
    async with _publisher(kafka_bootstrap) as publisher:
        await publisher.send_and_wait(topic, b"first", key=b"k")
        too_large = await publisher.send(topic, b"x" * (LIMIT * 3), key=b"k")
        queued_behind = [await publisher.send(topic, b"q%d" % i, key=b"k") for i in range(5)]

        with pytest.raises(RecordTooLarge) as refused:
            await too_large
        assert is_record_too_large(refused.value)
        assert not refused.value.retriable
        assert topic in str(refused.value)
        # Records batched beside it share its refusal, as retryable; sent again, they land.
        outcomes = await asyncio.gather(*queued_behind, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, BatchRefused)
                assert outcome.retriable
                assert not is_record_too_large(outcome)
                await publisher.send_and_wait(topic, b"q%d" % i, key=b"k")
        for i in range(5):
            await publisher.send_and_wait(topic, b"after%d" % i, key=b"k")

    records = await read_topic(kafka_bootstrap, topic, until=11)
    assert [r.value for r in records] == [
        b"first",
        *(b"q%d" % i for i in range(5)),
        *(b"after%d" % i for i in range(5)),
    ]


async def test_a_record_over_the_request_size_fails_before_it_is_sent(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"t-{unique}.huge"
    await _create_topic(kafka_bootstrap, topic)
    async with _publisher(kafka_bootstrap) as publisher:
        with pytest.raises(RecordTooLarge, match="5000001 bytes"):
            await publisher.send(topic, b"x" * 5_000_000, key=b"k")

        metadata = await publisher.send_and_wait(topic, b"fine", key=b"k")

    assert metadata.offset == 0


async def test_shrinking_then_restoring_max_message_bytes_does_not_poison_the_partition(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"t-{unique}.llm.requests.dlq"
    await _create_topic(kafka_bootstrap, topic)
    big = b"b" * 5_000
    async with _publisher(kafka_bootstrap) as publisher:
        await publisher.send_and_wait(topic, b"before", key=b"k")

        await _set_max_message_bytes(kafka_bootstrap, topic, 1_000)
        await _until_send_outcome(publisher, topic, big, rejected=True)
        await _set_max_message_bytes(kafka_bootstrap, topic, 1_048_588)
        await _until_send_outcome(publisher, topic, big, rejected=False)

        offsets = [
            (await publisher.send_and_wait(topic, b"after%d" % i, key=b"k")).offset
            for i in range(5)
        ]

    assert offsets == list(range(offsets[0], offsets[0] + 5))


def _consumer_record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    headers = [("ce_id", b"req-%d" % offset), ("x-raw", b"\xff\x00")]
    return ConsumerRecord(
        topic="llm.requests",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"req",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=headers,
    )


async def test_a_dead_letter_too_large_for_its_topic_is_parked_truncated(
    kafka_bootstrap: str, unique: str
) -> None:
    dlq = f"t-{unique}.llm.requests.dlq"
    await _create_topic(kafka_bootstrap, dlq, **{"max.message.bytes": str(LIMIT)})
    original = bytes(range(256)) * 400  # 102 400 bytes
    async with _publisher(kafka_bootstrap) as publisher:
        for offset, value in ((6, b"first poison"), (7, original), (8, b"small poison")):
            await publish_dead_letter(
                publisher,
                _consumer_record(value, offset),
                topic=dlq,
                reason=DeadLetterReason.HANDLER,
                error=ValueError("boom"),
                attempts=3,
            )

    first, truncated, intact = await read_topic(kafka_bootstrap, dlq, until=3)
    assert first.value == b"first poison"
    assert 0 < len(truncated.value) < LIMIT
    assert original.startswith(truncated.value)
    assert header_value(truncated.headers, events.DLQ_TRUNCATED) == str(len(original))
    assert truncated.key == b"req"
    assert list(truncated.headers[:2]) == [("ce_id", b"req-7"), ("x-raw", b"\xff\x00")]
    assert header_value(truncated.headers, events.DLQ_ORIGINAL_OFFSET) == "7"
    assert intact.value == b"small poison"
    assert header_value(intact.headers, events.DLQ_TRUNCATED) is None


async def test_a_producer_whose_sender_died_is_replaced(kafka_bootstrap: str, unique: str) -> None:
    topic = f"t-{unique}.replies"
    await _create_topic(kafka_bootstrap, topic)
    async with _publisher(kafka_bootstrap) as publisher:
        await publisher.send_and_wait(topic, b"before", key=b"k")
        sender = publisher._producer._sender.sender_task  # pyright: ignore[reportPrivateUsage]
        assert sender is not None
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender

        metadata = await asyncio.wait_for(publisher.send_and_wait(topic, b"after", key=b"k"), 30)

    assert metadata.offset == 1


# --- a broker outage, on a throwaway second broker (never the shared one) ---------------------


@pytest.fixture
def throwaway_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    with private_broker(tmp_path) as broker:
        yield broker


async def test_the_publisher_delivers_again_after_a_broker_outage(
    throwaway_broker: PrivateBroker, unique: str
) -> None:
    bootstrap = await throwaway_broker.start()
    topic = f"t-{unique}.replies"
    await ensure_topics(bootstrap, [topic], partitions=1, replication_factor=1)
    # Batches that wait longer than this for a partition leader fail (and leave a gap).
    async with _publisher(bootstrap, request_timeout_ms=2_000) as publisher:

        async def publish_until_refused() -> KafkaError:
            n = 0
            while True:
                n += 1
                try:
                    await publisher.send_and_wait(topic, b"steady%d" % n, key=b"k")
                except KafkaError as exc:
                    return exc

        steady = asyncio.create_task(publish_until_refused())
        await publisher.send_and_wait(topic, b"first", key=b"k")
        await throwaway_broker.stop()
        refused = await asyncio.wait_for(steady, 90)
        assert not is_record_too_large(refused)

        await throwaway_broker.start()
        for i in range(20):
            await asyncio.wait_for(publisher.send_and_wait(topic, b"after%d" % i, key=b"k"), 60)

    records = await read_topic(
        bootstrap, topic, until=lambda rs: bool(rs) and rs[-1].value == b"after19"
    )
    after = [r.value for r in records if r.value.startswith(b"after")]
    assert after == [b"after%d" % i for i in range(20)]
