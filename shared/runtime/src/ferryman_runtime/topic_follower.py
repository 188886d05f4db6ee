"""Following one topic whole, with no consumer group: every replica reads every partition
(control events, the catalog, a worker's own side topics). Nothing is committed; a restart
after a failure resumes from the last record handed over."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]

from ferryman.kafka_config import KafkaConnection
from ferryman.topics import wait_for_partitions
from ferryman_runtime.undecodable import RawRecord, fetch_raw_records

logger = logging.getLogger(__name__)

Start = Literal["beginning", "window", "end"]
"""Where a follower first reads each partition from (see `TopicFollower`)."""

_FIRST_DELAY = 1.0
_MAX_DELAY = 30.0
_RAW_FETCH_BYTES = 1 << 20
_SYNC_RETRY = 0.2


@dataclass(frozen=True)
class FollowedRecord:
    """One record of the followed topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int
    offset: int
    timestamp_ms: int


class TopicFollower:
    """Reads every partition of one topic with no consumer group (every replica reads all).

    Args:
        connection: the Kafka connection.
        topic: the followed topic.
        on_record: called with each record, in offset order per partition; an exception
            it raises is logged and the record skipped.
        client_id: names the consumer.
        start: where a partition is first read from: `beginning` (the whole topic, e.g. a
            compacted one), `window` (records at most `window` seconds older than `run()`'s
            first call; the end when there are none) or `end` (only records published after
            the follower got positioned).
        window: seconds read back with `start="window"`.
        partitions_timeout: seconds one attempt waits for the topic to exist.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        *,
        on_record: Callable[[FollowedRecord], None],
        client_id: str,
        start: Start = "window",
        window: float = 0.0,
        partitions_timeout: float = 60.0,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._on_record = on_record
        self._client_id = client_id
        self._start = start
        self._window = window
        self._partitions_timeout = partitions_timeout
        self.ready = asyncio.Event()
        """Set once positioned and every record published before then was handed over."""
        self._live = asyncio.Event()
        self._since_ms: int | None = None
        self._next: dict[int, int] = {}
        """Per partition, the offset of the next record to hand over."""
        self._catch_up: dict[int, int] = {}
        self._waiters: list[tuple[dict[int, int], asyncio.Future[None]]] = []
        self._session: tuple[AIOKafkaConsumer, list[TopicPartition]] | None = None
        """The offsets client (see `_follow`) and the partitions, while positioned."""
        """The consumer and its partitions while live."""
        self._positioned_this_session = False

    @property
    def live(self) -> bool:
        """Positioned and reading (False before, and between a failure and the restart)."""
        return self._live.is_set()

    async def run(self) -> None:
        """Read until cancelled. A failure (Kafka outage, missing topic) is logged and the
        follower starts again after a backoff (1 s doubling to 30 s), from where it got to."""
        if self._since_ms is None:
            self._since_ms = int((time.time() - self._window) * 1000)
        delay = _FIRST_DELAY
        while True:
            try:
                await self._follow()
            except Exception as exc:  # the topic must keep flowing: start again
                if self._positioned_this_session:
                    delay = _FIRST_DELAY
                logger.error(
                    "following topic %s failed (%s: %s); starting again in %.0f s",
                    self._topic,
                    type(exc).__name__,
                    str(exc)[:200],
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)

    async def sync(self, timeout: float) -> None:
        """Return once every record published before this call was handed to `on_record`.

        Raises:
            TimeoutError: not within `timeout` seconds (e.g. Kafka is unreachable).
        """
        async with asyncio.timeout(timeout):
            targets = await self._end_offsets_now()
            if self._reached(targets):
                return
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter = (targets, done)
            self._waiters.append(waiter)
            try:
                await done
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _end_offsets_now(self) -> dict[int, int]:
        while True:
            await self._live.wait()
            session = self._session
            assert session is not None  # set before `_live`, cleared after it
            consumer, partitions = session
            try:
                ends = await consumer.end_offsets(partitions)
            except Exception as exc:  # the session failed or is failing: ask the next one
                logger.debug("end offsets of %s not read (%s); again", self._topic, exc)
                if session is self._session:
                    await asyncio.sleep(_SYNC_RETRY)  # a moment before asking again
                continue
            return {tp.partition: int(end) for tp, end in ends.items()}

    async def _follow(self) -> None:
        self._positioned_this_session = False
        options: dict[str, Any] = self._connection.aiokafka_options(self._client_id)
        # Every position is set explicitly; `earliest` only decides where a position whose
        # records were deleted (retention) resumes: at the oldest kept, never skipping ahead.
        consumer = AIOKafkaConsumer(
            **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        # `sync` asks for end offsets on a client of its own: on the reading consumer the
        # request would queue behind its long-polling fetch, which on a quiet topic answers
        # only after the fetch wait (500 ms).
        offsets = AIOKafkaConsumer(
            **self._connection.aiokafka_options(f"{self._client_id}-offsets"),
            group_id=None,
            enable_auto_commit=False,
        )
        try:
            await consumer.start()
            await offsets.start()
            found = await wait_for_partitions(
                consumer, self._topic, timeout=self._partitions_timeout
            )
            partitions = [TopicPartition(self._topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            # Ends first: a record published meanwhile is past them (and after `since`).
            ends = {
                tp.partition: int(end)
                for tp, end in (await consumer.end_offsets(partitions)).items()
            }
            await self._position(consumer, partitions, ends)
            if not self.ready.is_set():
                self._catch_up = ends
            self._session = (offsets, partitions)
            self._positioned_this_session = True
            self._live.set()
            self._settle()
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                except UnicodeDecodeError as exc:
                    await self._skip_undecodable(consumer, partitions, exc)
                    continue
                for tp, records in batches.items():
                    for record in records:
                        self._hand(
                            FollowedRecord(
                                key=record.key,
                                value=record.value,
                                headers=_present(record.headers),
                                partition=tp.partition,
                                offset=record.offset,
                                timestamp_ms=record.timestamp,
                            )
                        )
                        self._next[tp.partition] = record.offset + 1
                for tp in partitions:
                    # Past transaction markers and compacted gaps too (no record for them).
                    position = int(await consumer.position(tp))
                    self._next[tp.partition] = max(self._next[tp.partition], position)
                self._settle()
        finally:
            self._live.clear()
            self._session = None
            await offsets.stop()
            await consumer.stop()

    async def _position(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[int, int]
    ) -> None:
        fresh = [tp for tp in partitions if tp.partition not in self._next]
        if fresh and self._start == "beginning":
            beginnings = await consumer.beginning_offsets(fresh)
            for tp in fresh:
                self._next[tp.partition] = int(beginnings[tp])
        elif fresh and self._start == "window":
            assert self._since_ms is not None
            offsets = await consumer.offsets_for_times(dict.fromkeys(fresh, self._since_ms))
            for tp in fresh:
                found = offsets.get(tp)
                self._next[tp.partition] = (
                    int(found.offset) if found is not None else ends[tp.partition]
                )
        else:
            for tp in fresh:
                self._next[tp.partition] = ends[tp.partition]
        for tp in partitions:
            consumer.seek(tp, self._next[tp.partition])

    def _hand(self, record: FollowedRecord) -> None:
        try:
            self._on_record(record)
        except Exception as exc:  # one bad record never stops the topic
            logger.error(
                "record %s:%d@%d not handled (%s: %s); skipped",
                self._topic,
                record.partition,
                record.offset,
                type(exc).__name__,
                str(exc)[:200],
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )

    def _reached(self, targets: dict[int, int]) -> bool:
        return all(self._next.get(p, -1) >= end for p, end in targets.items() if end > 0)

    def _settle(self) -> None:
        if not self.ready.is_set() and self._reached(self._catch_up):
            self.ready.set()
        for targets, done in list(self._waiters):
            if not done.done() and self._reached(targets):
                done.set_result(None)

    async def _skip_undecodable(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], error: Exception
    ) -> None:
        """Hand over the records behind a fetch aiokafka could not decode (a header key that
        is not UTF-8; it names no partition): each partition is read raw from its next
        offset up to and including such a record, then resumes after it.

        Raises:
            UnicodeDecodeError: no partition holds such a record.
            aiokafka.errors.KafkaError: a partition could not be read raw.
        """
        client = consumer._client  # pyright: ignore[reportPrivateUsage]  # no public raw fetch
        found = False
        for tp in partitions:
            raws = await fetch_raw_records(client, tp, self._next[tp.partition], _RAW_FETCH_BYTES)
            bad = next((i for i, raw in enumerate(raws) if raw.header_error() is not None), None)
            if bad is not None:
                found = True
                logger.warning(
                    "record %s:%d@%d has a header key that is not UTF-8 (escaped)",
                    self._topic,
                    tp.partition,
                    raws[bad].offset,
                )
                for raw in raws[: bad + 1]:
                    self._hand(_from_raw(tp.partition, raw))
                    self._next[tp.partition] = raw.offset + 1
            # Records of other partitions taken by the failed fetch are read again.
            consumer.seek(tp, self._next[tp.partition])
        if not found:
            raise error
        self._settle()


def _present(headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    # The protocol allows a header without a value; no CloudEvents attribute is one.
    return [(key, value) for key, value in headers if value is not None]


def _from_raw(partition: int, raw: RawRecord) -> FollowedRecord:
    return FollowedRecord(
        key=raw.key,
        value=raw.value,
        headers=_present(
            [(key.decode("utf-8", errors="backslashreplace"), value) for key, value in raw.headers]
        ),
        partition=partition,
        offset=raw.offset,
        timestamp_ms=raw.timestamp,
    )
