"""Reading and replaying dead-letter topics (used by `ferryman dlq`)."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]

from ferryman.client import wait_for_partitions
from ferryman.codec import header_value
from ferryman.contracts import events
from ferryman.publisher import KafkaPublisher


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str | None:
        """Return a header's value as text."""
        return header_value(self.headers, name)

    @property
    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was dead-lettered."""
        return [(k, v) for k, v in self.headers if k not in events.DLQ_HEADERS]

    @property
    def location(self) -> str:
        """`topic/partition/offset` of this dead letter."""
        return f"{self.topic}/{self.partition}/{self.offset}"


async def read_dead_letters(bootstrap_servers: str, topic: str) -> AsyncIterator[DeadLetter]:
    """Yield every record of `topic` from the beginning to its current end.

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await wait_for_partitions(consumer, topic, timeout=5.0)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if ends[tp] > await consumer.position(tp)}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    yield DeadLetter(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                        headers=list(record.headers),
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def replay(publisher: KafkaPublisher, letter: DeadLetter) -> str:
    """Republish a dead letter to its original topic, unchanged but for `dlq-replay-of`.

    The `ce_id` is kept, so the worker treats it as the same request.

    Returns:
        the topic the record was replayed to.

    Raises:
        ValueError: the record has no `dlq-original-topic` header.
        aiokafka.errors.KafkaError: Kafka did not acknowledge the replay.
    """
    original_topic = letter.header(events.DLQ_ORIGINAL_TOPIC)
    if not original_topic:
        raise ValueError(f"{letter.location} has no {events.DLQ_ORIGINAL_TOPIC} header")
    headers = [
        *[(k, v) for k, v in letter.original_headers if k != events.DLQ_REPLAY_OF],
        (events.DLQ_REPLAY_OF, letter.location.encode()),
    ]
    await publisher.send_and_wait(original_topic, letter.value, key=letter.key, headers=headers)
    return original_topic
