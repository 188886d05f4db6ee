"""Reading and replaying dead-letter topics (used by `ferryman dlq`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ferryman.codec import header_value
from ferryman.contracts import events
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher
from ferryman.topic_reader import read_topic_records


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


async def read_dead_letters(
    connection: str | KafkaConnection, topic: str
) -> AsyncIterator[DeadLetter]:
    """Yield every record of `topic` from the beginning to its current end.

    Raises:
        LookupError: the topic does not exist.
        aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
    """
    async for record in read_topic_records(connection, topic):
        yield DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers,
        )


async def replay(publisher: KafkaPublisher, letter: DeadLetter) -> str:
    """Republish a dead letter to its original topic, unchanged but for `dlq-replay-of`.

    The `ce_id` is kept, so the worker treats it as the same request.

    Returns:
        the topic the record was replayed to.

    Raises:
        ValueError: the record has no `dlq-original-topic` header, or it was truncated to
            fit the dead-letter topic (its original value is lost).
        aiokafka.errors.KafkaError: Kafka did not acknowledge the replay.
    """
    original_topic = letter.header(events.DLQ_ORIGINAL_TOPIC)
    if not original_topic:
        raise ValueError(f"{letter.location} has no {events.DLQ_ORIGINAL_TOPIC} header")
    truncated = letter.header(events.DLQ_TRUNCATED)
    if truncated is not None:
        raise ValueError(
            f"{letter.location} holds only part of the original value ({truncated} bytes); "
            "replaying it would publish a different request"
        )
    headers = [
        *[(k, v) for k, v in letter.original_headers if k != events.DLQ_REPLAY_OF],
        (events.DLQ_REPLAY_OF, letter.location.encode()),
    ]
    await publisher.send_and_wait(original_topic, letter.value, key=letter.key, headers=headers)
    return original_topic
