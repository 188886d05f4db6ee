"""At-least-once Kafka consumption with many records in flight per partition.

Why our own engine instead of a FastStream subscriber: FastStream's concurrent
subscribers either auto-commit (at-most-once) or run one message at a time per
partition, and its `ack()` commits the consumer's whole position, past records
still in flight. LLM calls take seconds, so a worker must run hundreds of them
at once and still never commit past unfinished work. This engine runs on
aiokafka inside the FastStream app (see `ferryman_runtime.hosting`):

* every fetched record becomes a task; at most `max_in_flight` run at once;
  at the limit the consumer pauses its partitions (backpressure) but keeps
  polling, so the group never sees it as dead;
* completion is tracked per partition (`PartitionOffsets`) and only the lowest
  unfinished offset is committed, soon after it advances;
* a handler that raises is retried with capped exponential backoff without
  committing (a worker that cannot reach the DLQ must not lose the record);
* on rebalance, revoked partitions get a last commit of what is finished, and
  work on partitions that did not come back is cancelled, uncommitted;
* `stop()` stops fetching, lets in-flight work finish within a grace period,
  cancels the rest (it will be redelivered), commits and leaves the group.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import (  # pyright: ignore[reportMissingTypeStubs]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.structs import OffsetAndMetadata  # pyright: ignore[reportMissingTypeStubs]

from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.offsets import PartitionOffsets

logger = logging.getLogger(__name__)

RecordHandler = Callable[[ConsumerRecord[bytes, bytes], int], Awaitable[None]]
"""Processes one record; the int is the attempt number (1 on first delivery)."""


class ParallelConsumer:
    """Consumes topics in a group, running up to `max_in_flight` records concurrently.

    Args:
        bootstrap_servers: comma-separated `host:port` list.
        topics: topics to subscribe to.
        group_id: the consumer group shared by all replicas.
        handler: called once per record (again on failure, with a higher attempt).
        max_in_flight: records processed at once by this process.
        metrics: where to count records, retries and commits.
        client_id: names this client in broker logs.
        retry_backoff: first and maximum delay between handler retries, seconds.
        commit_interval: minimum seconds between two commits (they are coalesced).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: Iterable[str],
        group_id: str,
        handler: RecordHandler,
        max_in_flight: int,
        metrics: ConsumerMetrics,
        client_id: str = "ferryman",
        retry_backoff: tuple[float, float] = (0.5, 30.0),
        commit_interval: float = 0.2,
        session_timeout_ms: int = 10_000,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._topics = list(topics)
        self._group_id = group_id
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._metrics = metrics
        self._retry_backoff = retry_backoff
        self._commit_interval = commit_interval
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(session_timeout_ms // 4, 500),
        }
        self._consumer_or_none: AIOKafkaConsumer | None = None
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[tuple[TopicPartition, int], asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._paused = False
        self._stopping = False
        self._peak_in_flight = 0
        self._assigned_once = asyncio.Event()
        self._share = 0.0

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._consumer_or_none is None:
            raise RuntimeError("ParallelConsumer.start() was not called")
        return self._consumer_or_none

    @property
    def in_flight(self) -> int:
        """Records being processed right now."""
        return len(self._tasks)

    @property
    def peak_in_flight(self) -> int:
        """The most records ever processed at once by this consumer."""
        return self._peak_in_flight

    @property
    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this consumer."""
        return sorted(self._offsets, key=lambda tp: (tp.topic, tp.partition))

    def share(self) -> float:
        """This consumer's assigned partitions ÷ all partitions of its topics (0 before any).

        Replicas of a group hold disjoint partitions, so their shares sum to 1: a limit
        multiplied by each replica's share holds across replicas without shared state.
        """
        return self._share

    def _update_share(self) -> None:
        total = 0
        for topic in self._topics:
            partitions = self._consumer.partitions_for_topic(topic)
            total += len(partitions) if partitions else 0
        self._share = min(1.0, len(self._offsets) / total) if total else 0.0

    async def wait_assigned(self, timeout: float) -> bool:
        """Wait until the group assigned partitions at least once; return whether it did."""
        try:
            await asyncio.wait_for(self._assigned_once.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for `/health`."""
        return {
            "group_id": self._group_id,
            "topics": self._topics,
            "assigned": [f"{tp.topic}:{tp.partition}" for tp in self.assignment],
            "share": round(self._share, 4),
            "in_flight": self.in_flight,
            "peak_in_flight": self._peak_in_flight,
            "max_in_flight": self._max_in_flight,
            "paused": self._paused,
            "stopping": self._stopping,
        }

    async def start(self) -> None:
        """Join the group and start fetching.

        Raises:
            aiokafka.errors.KafkaConnectionError: no broker answered.
        """
        # Created here, not in __init__: aiokafka binds to the running event loop.
        self._consumer_or_none = AIOKafkaConsumer(**self._consumer_options)
        await self._consumer.start()
        self._consumer.subscribe(topics=self._topics, listener=_Listener(self))
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name="ferryman-fetch")
        self._commit_task = asyncio.create_task(self._commit_loop(), name="ferryman-commit")

    async def stop(self, grace_period: float) -> None:
        """Stop fetching, finish in-flight work within `grace_period` seconds, commit, leave.

        Work still running after the grace period is cancelled and not committed,
        so the group redelivers it after a restart.
        """
        self._stopping = True
        if self._fetch_task is not None:
            self._fetch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch_task
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        pending = list(self._tasks.values())
        if pending:
            logger.info("draining %d in-flight records (grace %.1fs)", len(pending), grace_period)
            _done, still_running = await asyncio.wait(pending, timeout=grace_period)
            if still_running:
                logger.warning("cancelling %d records after the grace period", len(still_running))
                for task in still_running:
                    task.cancel()
                await asyncio.gather(*still_running, return_exceptions=True)
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        await self._commit()
        await self._consumer.stop()

    async def _fetch_loop(self) -> None:
        while True:
            free = self._max_in_flight - len(self._tasks)
            if free <= 0:
                self._pause()
                self._slot_freed.clear()
                # Poll even while paused so the group does not evict us (max.poll.interval).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)
                batch = await self._consumer.getmany(timeout_ms=0)
            else:
                self._resume()
                batch = await self._consumer.getmany(timeout_ms=500, max_records=free)
            for tp, records in batch.items():
                offsets = self._offsets.get(tp)
                if offsets is None:  # revoked while the batch was in hand
                    continue
                for record in records:
                    if offsets.seen(record.offset):
                        continue
                    offsets.add(record.offset)
                    self._metrics.records.labels(topic=tp.topic).inc()
                    task = asyncio.create_task(self._process(tp, record, offsets))
                    self._tasks[(tp, record.offset)] = task
            self._peak_in_flight = max(self._peak_in_flight, len(self._tasks))
            self._metrics.in_flight.set(len(self._tasks))

    def _pause(self) -> None:
        if not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
            self._metrics.paused.set(1)
        else:  # partitions assigned while paused must be paused too
            self._consumer.pause(*self._consumer.assignment())

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            self._metrics.paused.set(0)

    async def _process(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], offsets: PartitionOffsets
    ) -> None:
        attempt = 1
        try:
            while True:
                try:
                    await self._handler(record, attempt)
                    break
                except Exception:
                    delay = min(self._retry_backoff[1], self._retry_backoff[0] * 2 ** (attempt - 1))
                    logger.exception(
                        "handler failed for %s:%d@%d (attempt %d); retrying in %.1fs",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        attempt,
                        delay,
                    )
                    self._metrics.handler_retries.labels(topic=tp.topic).inc()
                    attempt += 1
                    await asyncio.sleep(delay)
            if offsets.finish(record.offset):
                self._commit_wanted.set()
        finally:
            self._tasks.pop((tp, record.offset), None)
            self._metrics.in_flight.set(len(self._tasks))
            self._slot_freed.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit()
            # Coalesce: completions during this pause share the next commit.
            await asyncio.sleep(self._commit_interval)

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            wanted = self._offsets if partitions is None else partitions
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp in wanted:
                state = self._offsets.get(tp)
                if state is not None and state.needs_commit() and state.committable is not None:
                    offsets[tp] = OffsetAndMetadata(state.committable, "")
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)  # pyright: ignore[reportArgumentType]
            except (KafkaError, AssertionError) as exc:
                # A rebalance is in progress or we lost the group; the next commit retries.
                logger.warning("commit failed (%s); will retry", exc)
                self._commit_wanted.set()
                return
            for tp, meta in offsets.items():
                self._offsets[tp].committed = meta.offset
            self._metrics.commits.inc()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._commit(revoked)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        lost = set(self._offsets) - assigned
        for tp in lost:
            tasks = [task for (t, _), task in self._tasks.items() if t == tp]
            if tasks:
                logger.warning(
                    "partition %s:%d lost; cancelling %d", tp.topic, tp.partition, len(tasks)
                )
            for task in tasks:
                task.cancel()
            del self._offsets[tp]
        for tp in assigned:
            state = self._offsets.get(tp)
            if state is None:
                self._offsets[tp] = PartitionOffsets()
            elif state.next_fetch is not None:
                # Kept across the rebalance: resume after what we already hold.
                self._consumer.seek(tp, state.next_fetch)
        if self._paused:
            self._consumer.pause(*assigned)
        self._update_share()
        self._assigned_once.set()
        logger.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


class _Listener(ConsumerRebalanceListener):  # pyright: ignore[reportUntypedBaseClass]
    def __init__(self, owner: ParallelConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, revoked: set[TopicPartition]
    ) -> None:
        await self._owner._on_revoked(revoked)  # pyright: ignore[reportPrivateUsage]

    async def on_partitions_assigned(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, assigned: set[TopicPartition]
    ) -> None:
        await self._owner._on_assigned(assigned)  # pyright: ignore[reportPrivateUsage]
