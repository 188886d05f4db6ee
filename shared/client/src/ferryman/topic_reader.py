"""Reads a topic outside any consumer group: from the beginning, or its last records, to its
current end or on (used by `ferryman tail`, `ferryman health` and `ferryman dlq`)."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]

from ferryman.kafka_config import KafkaConnection
from ferryman.topics import wait_for_partitions


@dataclass(frozen=True)
class TopicRecord:
    """One record as read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


async def read_topic_records(
    connection: str | KafkaConnection,
    topic: str,
    *,
    last: int | None = None,
    since_ms: int | None = None,
    follow: bool = False,
    metadata_timeout: float = 5.0,
) -> AsyncIterator[TopicRecord]:
    """Yield the records of `topic`, partition by partition in offset order.

    Starts at the beginning, or `last` records before the end of each partition, or at the
    first record whose timestamp is `since_ms` (epoch milliseconds) or later; stops at the
    end as it was when reading began, or never with `follow`.

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    options = KafkaConnection.coerce(connection).aiokafka_options("ferryman-cli")
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = await wait_for_partitions(consumer, topic, timeout=metadata_timeout)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(assigned)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in assigned})
            starts = {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in assigned}
        remaining: set[TopicPartition] = set()
        for tp in assigned:
            first = starts[tp] if last is None else max(starts[tp], ends[tp] - last)
            consumer.seek(tp, first)
            if follow or ends[tp] > first:
                remaining.add(tp)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if not follow and record.offset >= ends[tp]:
                        continue
                    yield TopicRecord(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                        timestamp_ms=record.timestamp,
                        key=record.key,
                        value=record.value,
                        headers=list(record.headers),
                    )
            if not follow:
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
