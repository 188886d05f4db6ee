"""Moves a consumer past records aiokafka cannot decode, losing nothing.

When `getmany()` raises `UnicodeDecodeError` it names no partition or offset, and
it has already dropped the records it took from other partitions in that call
(their positions advanced, the records never reached us). So every assigned
partition is rewound to its first offset not yet handed out and read raw from
there (`ferryman_runtime.undecodable`). In a partition holding an undecodable
record, the records before it and the record itself are dispatched as far as
`max_in_flight` allows, and the partition resumes after the last one dispatched;
whatever did not fit is met again on the next fetch.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import IllegalStateError, KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman_runtime.in_flight import InFlight, Work
from ferryman_runtime.offsets import PartitionOffsets
from ferryman_runtime.record_attempts import RecordAttempts
from ferryman_runtime.undecodable import RawRecord, UndecodableRecord, fetch_raw_records

logger = logging.getLogger("ferryman_runtime.parallel_consumer")


class UndecodableSkipper:
    """Finds the undecodable record behind a failed fetch and dispatches past it.

    Args:
        consumer: returns the running aiokafka consumer.
        in_flight: where records are dispatched.
        attempts: runs decodable records and hands undecodable ones over.
        max_bytes: how much of a partition one raw read returns (at least one batch).
    """

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        in_flight: InFlight,
        attempts: RecordAttempts,
        *,
        max_bytes: int,
    ) -> None:
        self._consumer = consumer
        self._in_flight = in_flight
        self._attempts = attempts
        self._max_bytes = max_bytes

    async def skip(self, error: UnicodeDecodeError) -> None:
        """Recover from `error`, raised by `getmany()` while decoding a fetched batch.

        Raises:
            UnicodeDecodeError: `error`, when no partition holds an undecodable record
                (and every partition could be read).
            RuntimeError: a partition holds one and no `on_undecodable` is set.
        """
        consumer = self._consumer()
        client = consumer._client  # pyright: ignore[reportPrivateUsage]  # no public raw fetch
        free = self._in_flight.free
        found = inconclusive = False
        for tp, offsets in list(self._in_flight.partitions.items()):
            try:
                resume = await self._first_not_handed_out(consumer, tp, offsets)
                raws = await fetch_raw_records(client, tp, resume, self._max_bytes)
            except KafkaError as exc:
                inconclusive = True
                logger.warning("could not read %s:%d raw: %s", tp.topic, tp.partition, exc)
                continue
            if self._in_flight.partitions.get(tp) is not offsets:  # rebalanced meanwhile
                continue
            bad = next((i for i, raw in enumerate(raws) if raw.header_error() is not None), None)
            if bad is not None:
                found = True
                if self._attempts.on_undecodable is None:
                    raise RuntimeError(
                        f"record {tp.topic}:{tp.partition}@{raws[bad].offset} has a header key "
                        "that is not UTF-8 and no on_undecodable is set"
                    ) from error
                for raw in raws[: bad + 1]:
                    if free <= 0:
                        break
                    free -= 1
                    self._in_flight.dispatch(tp, offsets, raw.offset, raw.key, self._work(tp, raw))
                    resume = raw.offset + 1
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                consumer.seek(tp, resume)
        if not found and not inconclusive:
            raise error

    def _work(self, tp: TopicPartition, raw: RawRecord) -> Work:
        reason = raw.header_error()
        if reason is None:
            return functools.partial(self._attempts.settle, raw.to_consumer_record(tp))
        logger.error(
            "record %s:%d@%d cannot be decoded (%s); handing it over",
            tp.topic,
            tp.partition,
            raw.offset,
            reason,
        )
        record = UndecodableRecord.from_raw(tp, raw, reason)
        return functools.partial(self._attempts.settle_undecodable, record)

    @staticmethod
    async def _first_not_handed_out(
        consumer: AIOKafkaConsumer, tp: TopicPartition, offsets: PartitionOffsets
    ) -> int:
        if offsets.next_fetch is not None:
            return offsets.next_fetch
        # Nothing handed out since the assignment: the fetch started at the committed
        # offset, or at the beginning (auto_offset_reset="earliest") when there is none.
        committed = await consumer.committed(tp)
        if committed is not None:
            return int(committed)
        beginning = await consumer.beginning_offsets([tp])
        return int(beginning[tp])
