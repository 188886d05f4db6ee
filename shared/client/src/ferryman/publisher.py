"""The idempotent Kafka producer every worker publishes through.

Workers publish through aiokafka directly rather than through FastStream's
`publish()`: dead-lettered records must keep their original headers byte for
byte (FastStream's header API is `dict[str, str]` and adds headers of its own),
and chunks are sent without waiting for each acknowledgement so a fast stream
is not paced by broker round trips; per-partition order still holds because
the producer is idempotent.

aiokafka's idempotent producer numbers each partition's batches when it hands
them to the network and never takes a number back. A batch that fails for good
(too large for the topic, or expired while a partition had no leader during a
broker outage) leaves a gap, and the broker then refuses every later batch of
that partition with `OutOfOrderSequenceNumber` until the process restarts.
`KafkaPublisher` closes the gap the way Kafka's Java producer does: after any
failed batch it drops the producer id, so the next batch asks the broker for a
fresh id whose sequences start at zero.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import (  # pyright: ignore[reportMissingTypeStubs]
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.producer.transaction_manager import (  # pyright: ignore[reportMissingTypeStubs]
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    PidAndEpoch,
)
from aiokafka.structs import RecordMetadata  # pyright: ignore[reportMissingTypeStubs]

Headers = Sequence[tuple[str, bytes]]

logger = logging.getLogger(__name__)

_OWNED_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "acks",
        "enable_idempotence",
        "transactional_id",
        "linger_ms",
        "partitioner",
    }
)


class RecordTooLarge(MessageSizeTooLargeError):
    """The broker or this producer refused a record as too large; resending it cannot succeed.

    A `MessageSizeTooLargeError`, so `KafkaError` handlers see it; `retriable` is False.
    """

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(
            f"a record of about {size} bytes is larger than topic {topic!r} accepts "
            "(topic max.message.bytes, or the producer's max_request_size)"
        )
        self.topic = topic
        self.size = size


class BatchRefused(KafkaError):
    """A small record was refused because its batch also held one too large for the topic.

    Nothing is wrong with the record itself: send it again.
    """

    retriable = True

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(
            f"a record of about {size} bytes to {topic!r} was refused with a larger record "
            "batched beside it; send it again"
        )
        self.topic = topic
        self.size = size


class ProducerRestarted(KafkaError):
    """The producer's background sender stopped and a fresh producer replaced it.

    Records still queued in the stopped one were not delivered; send them again.
    """

    retriable = True


def is_record_too_large(error: BaseException) -> bool:
    """Tell whether `error` means the record is too large for Kafka (not retryable).

    A reply that is too large should end its request with a small `failed`
    event rather than be retried; a dead letter should be truncated.
    """
    return isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError)


class _CachedKeyPartitioner:
    """aiokafka's default partitioner, with the murmur2 hash of recent keys cached.

    A request's chunks all share its key; pure-Python murmur2 costs ~6 µs per record.
    """

    def __init__(self, max_keys: int = 8192) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys
        self._random = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._random(key, all_partitions, available)
        digest = self._hashes.get(key)
        if digest is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            digest = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[digest % len(all_partitions)]


def _forget_producer_id(producer: AIOKafkaProducer) -> bool:
    """Drop `producer`'s id and sequence numbers so its sender fetches a fresh id.

    Relies on aiokafka 0.14's TransactionManager; tests/unit/test_publisher.py guards it.
    Returns False when there was nothing to drop (a fresh id is already on its way).
    """
    manager = producer._txn_manager  # pyright: ignore[reportPrivateUsage]
    if manager is None or not manager.has_pid():
        return False
    # The sender checks for an id before every drain and asks the broker when there is
    # none. Batches already numbered keep the old id; the broker still accepts their
    # retries, and their partition stays muted until they are done, so order holds.
    manager._pid_waiter = asyncio.get_running_loop().create_future()  # pyright: ignore[reportPrivateUsage]
    manager._sequence_numbers.clear()  # pyright: ignore[reportPrivateUsage]
    manager._pid_and_epoch = PidAndEpoch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH)  # pyright: ignore[reportPrivateUsage]
    return True


def _sender_stopped(producer: AIOKafkaProducer) -> bool:
    task = producer._sender.sender_task  # pyright: ignore[reportPrivateUsage]
    return task is not None and task.done()


def _record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


class KafkaPublisher:
    """Publishes records with `acks=all` and idempotence on.

    A failed record never stops later records to the same partition: the
    producer takes a fresh producer id after any failed batch, and is replaced
    outright if its background sender dies.

    Args:
        bootstrap_servers: comma-separated `host:port` list.
        client_id: names this client in broker logs.
        linger_ms: how long the producer may hold a record to batch it with later ones.
            0 (the default) sends as soon as the connection is free; records still batch
            on their own while a produce request is in flight. Measured with reply
            streams (tests/bench/linger_cost.py, docs/benchmarks.md "Linger"): a linger
            adds its full length to every stream's first chunk, while at 10 req/s a
            stream's chunks are too far apart for 1 to 5 ms to batch them, and the linger
            timer's extra wake-up costs about what the saved produce requests would.
        connection: extra `AIOKafkaProducer` options (security protocol, SASL,
            SSL context, timeouts), merged into the producer's options.

    Raises:
        ValueError: `connection` sets an option the publisher owns (acks,
            idempotence, partitioner, linger, servers, client id).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        linger_ms: int = 0,
        connection: Mapping[str, Any] | None = None,
    ) -> None:
        extra = dict(connection or {})
        owned = sorted(_OWNED_OPTIONS & extra.keys())
        if owned:
            raise ValueError(f"KafkaPublisher sets these producer options itself: {owned}")
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            # aiokafka holds ONE open batch per partition and makes every further send wait
            # until it is drained: with the 16 KiB default (about 15 chunk events) thousands
            # of concurrent streams queue behind it until sends time out. 256 KiB carries
            # ~250 chunk events per round trip and stays far below topics' 1 MB default limit
            # (a topic must accept 256 KiB records, or small records batched together fail).
            "max_batch_size": 256 * 1024,
            "max_request_size": 4 * 1024 * 1024,
            "partitioner": _CachedKeyPartitioner(),
            **extra,
        }
        self._producer_or_none: AIOKafkaProducer | None = None
        self._replacing = asyncio.Lock()
        self._refused: dict[
            str, list[tuple[asyncio.Future[RecordMetadata], int, BaseException]]
        ] = {}

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._producer_or_none is None:
            raise RuntimeError("KafkaPublisher.start() was not called")
        return self._producer_or_none

    async def start(self) -> None:
        """Connect to the cluster.

        Raises:
            aiokafka.errors.KafkaConnectionError: no broker answered.
        """
        self._producer_or_none = await self._started_producer()

    async def _started_producer(self) -> AIOKafkaProducer:
        # Created here, not in __init__: aiokafka binds to the running event loop.
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        """Flush pending records and disconnect."""
        if self._producer_or_none is not None:
            await self._producer_or_none.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers = (),
    ) -> asyncio.Future[RecordMetadata]:
        """Enqueue a record; the returned future resolves when Kafka acknowledged it.

        The future fails with `RecordTooLarge` when the broker refuses the record's
        size, and with another `KafkaError` when it was not delivered (send it again).

        Raises:
            RecordTooLarge: the record exceeds the producer's `max_request_size`.
            aiokafka.errors.KafkaError: the record could not be enqueued.
        """
        producer = self._producer
        if _sender_stopped(producer):
            producer = await self._replace_stopped(producer)
        try:
            sent: asyncio.Future[RecordMetadata] = await producer.send(
                topic, value=value, key=key, headers=list(headers)
            )
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(topic, _record_size(key, value, headers)) from exc
        acked: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        size = functools.partial(_record_size, key, value, headers)
        sent.add_done_callback(functools.partial(self._settle, acked, producer, topic, size))
        return acked

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers = (),
    ) -> RecordMetadata:
        """Publish a record and wait until Kafka acknowledged it.

        Raises:
            RecordTooLarge: the record is larger than the topic or producer accepts.
            aiokafka.errors.KafkaError: the record was not acknowledged.
        """
        return await (await self.send(topic, value, key=key, headers=headers))

    def _settle(
        self,
        acked: asyncio.Future[RecordMetadata],
        producer: AIOKafkaProducer,
        topic: str,
        size: functools.partial[int],
        sent: asyncio.Future[RecordMetadata],
    ) -> None:
        # Runs before the sender drains the partition again: the failed batch's callbacks
        # were scheduled before the sender task could wake up.
        if sent.cancelled():
            acked.cancel()
            return
        error = sent.exception()
        if error is None:
            if not acked.done():
                acked.set_result(sent.result())
            return
        if producer is self._producer_or_none and _forget_producer_id(producer):
            logger.warning(
                "a batch to %s failed (%s); taking a fresh producer id so later records "
                "to its partition are accepted",
                topic,
                type(error).__name__,
            )
        if is_record_too_large(error):
            # A batch is refused whole: judge its records once all of them are in (their
            # callbacks run back to back), so only the largest is blamed.
            refused = self._refused.setdefault(topic, [])
            if not refused:
                asyncio.get_running_loop().call_soon(self._judge, topic)
            refused.append((acked, size(), error))
            return
        if not acked.done():
            acked.set_exception(error)

    def _judge(self, topic: str) -> None:
        refused = self._refused.pop(topic, [])
        largest = max((record_size for _, record_size, _ in refused), default=0)
        for acked, record_size, cause in refused:
            verdict: KafkaError = (
                RecordTooLarge(topic, record_size)
                if record_size == largest
                else BatchRefused(topic, record_size)
            )
            verdict.__cause__ = cause
            if not acked.done():
                acked.set_exception(verdict)

    async def _replace_stopped(self, stopped: AIOKafkaProducer) -> AIOKafkaProducer:
        async with self._replacing:
            if self._producer_or_none is not stopped:
                return self._producer
            logger.error("the Kafka producer's sender stopped; starting a fresh producer")
            fresh = await self._started_producer()
            self._producer_or_none = fresh
        # Whatever the dead sender left queued would wait forever; fail it so callers resend.
        stopped._message_accumulator.fail_all(  # pyright: ignore[reportPrivateUsage]
            ProducerRestarted("the producer was replaced before this record was delivered")
        )
        await stopped.stop()
        return fresh
