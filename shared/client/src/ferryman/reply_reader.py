"""Reads a client's replies: its own reply topic, or its one partition of a shared topic."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.partitioner import murmur2  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts import events as ev
from ferryman.kafka_config import KafkaConnection
from ferryman.topics import wait_for_partitions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A reply record for a waiting request, with the headers the client checks."""

    event_type: str
    event_id: str | None
    run_id: str | None
    reply_token: str | None
    value: bytes


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner (and the workers' producer) picks for `key`."""
    digest: int = murmur2(key) & 0x7FFFFFFF
    return digest % partition_count


class ReplyReader:
    """Reads `topic` (every partition, or only `partition`) from its current end and hands
    each record to the request it answers (by `ce_correlationid`); other records are not
    for this client and are skipped.

    Args:
        connection: the cluster.
        topic: the reply topic.
        partition: the one partition to read, or None for all.
        metadata_timeout: seconds to wait for the topic's partitions.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        partition: int | None,
        *,
        metadata_timeout: float,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._partition = partition
        self._metadata_timeout = metadata_timeout
        self.partition_count = 0
        """Partitions of the topic (known once started)."""
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Queue[Delivery | BaseException]] = {}
        self._error: Exception | None = None

    async def start(self) -> None:
        """Connect and pin the read positions at the current end.

        Raises:
            LookupError: the topic does not exist.
            ValueError: `partition` is not a partition of the topic.
            aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
        """
        consumer = AIOKafkaConsumer(
            **self._connection.aiokafka_options("ferryman-client"),
            group_id=None,
            enable_auto_commit=False,
        )
        try:
            await consumer.start()
            assigned = await self._assign(consumer)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:  # pin the positions before anything is published
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer), name=f"replies:{self._topic}")

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        try:
            partitions = await wait_for_partitions(consumer, self._topic, self._metadata_timeout)
        except LookupError:
            raise LookupError(
                f"reply topic {self._topic!r} does not exist; create it "
                "(or pass create_reply_topic=True in development)"
            ) from None
        self.partition_count = len(partitions)
        if self._partition is None:
            chosen = sorted(partitions)
        elif self._partition in partitions:
            chosen = [self._partition]
        else:
            raise ValueError(
                f"reply_partition {self._partition} is not a partition of {self._topic!r} "
                f"(it has {len(partitions)})"
            )
        assigned = [TopicPartition(self._topic, p) for p in chosen]
        consumer.assign(assigned)
        return assigned

    async def stop(self) -> None:
        """Stop reading and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def receives(self, request_id: str) -> bool:
        """Whether replies to `request_id` (keyed by it) land where this reader reads."""
        if self._partition is None:
            return True
        return partition_for_key(request_id.encode(), self.partition_count) == self._partition

    def register(self, request_id: str) -> asyncio.Queue[Delivery | BaseException]:
        """Start collecting replies to `request_id`; a reading failure arrives as an exception.

        Raises:
            Exception: reading replies already failed (the error it failed with).
        """
        if self._error is not None:
            raise self._error
        queue: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._waiting[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        """Stop collecting replies to `request_id`."""
        self._waiting.pop(request_id, None)

    def route(self, headers: Sequence[tuple[str, bytes | None]], value: bytes | None) -> None:
        """Hand one reply record to the request it answers, if that request is waiting."""
        found = {k.lower(): v.decode("utf-8", errors="replace") for k, v in headers if v}
        queue = self._waiting.get(found.get(f"ce_{ev.EXT_CORRELATION_ID}", ""))
        if queue is not None:
            queue.put_nowait(
                Delivery(
                    event_type=found.get("ce_type", ""),
                    event_id=found.get("ce_id"),
                    run_id=found.get(f"ce_{ev.EXT_RUN_ID}"),
                    reply_token=found.get(f"ce_{ev.EXT_REPLY_TOKEN}"),
                    value=value or b"",
                )
            )

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        self.route(record.headers, record.value)
        except Exception as exc:  # e.g. credentials revoked: fail the waiting requests now
            logger.error("reading replies from %s failed: %s", self._topic, exc)
            self._error = exc
            for queue in self._waiting.values():
                queue.put_nowait(exc)
