"""Per-partition offset bookkeeping for out-of-order completion.

Records of one partition finish in any order; the offset that may be committed
is the lowest one not yet finished (Confluent Parallel Consumer's scheme), so a
crash never skips a record that was still in flight. `OffsetCommitter` commits
those offsets, coalescing the requests of many completions.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.structs import OffsetAndMetadata  # pyright: ignore[reportMissingTypeStubs]

from ferryman_runtime.log_throttle import LogThrottle
from ferryman_runtime.metrics import ConsumerMetrics

logger = logging.getLogger("ferryman_runtime.parallel_consumer")


class PartitionOffsets:
    """Tracks the in-flight offsets of one partition and its committable offset."""

    __slots__ = ("_done", "_open", "_pending", "committable", "committed", "next_fetch")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._open: set[int] = set()
        self._done: set[int] = set()
        self.committable: int | None = None
        """The offset to commit: every record below it has finished."""
        self.committed: int | None = None
        """The last offset successfully committed."""
        self.next_fetch: int | None = None
        """One past the highest offset handed out, to resume fetching after a rebalance."""

    def add(self, offset: int) -> None:
        """Register a fetched record. Offsets must be added in increasing order.

        Raises:
            ValueError: `offset` is not above every offset added before.
        """
        if self.next_fetch is not None and offset < self.next_fetch:
            raise ValueError(f"offset {offset} added after {self.next_fetch - 1}")
        self._pending.append(offset)
        self._open.add(offset)
        self.next_fetch = offset + 1

    def seen(self, offset: int) -> bool:
        """Return whether `offset` was already handed out (a refetch after a rebalance)."""
        return self.next_fetch is not None and offset < self.next_fetch

    def finish(self, offset: int) -> bool:
        """Mark a record finished; return whether the committable offset advanced.

        Offsets that are not in flight (unknown, or finished before) are ignored.
        """
        if offset not in self._open:
            return False
        self._open.discard(offset)
        self._done.add(offset)
        advanced = False
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self.committable = head + 1
            advanced = True
        return advanced

    @property
    def in_flight(self) -> int:
        """The number of records added and not yet finished."""
        return len(self._open)

    def needs_commit(self) -> bool:
        """Return whether the committable offset is ahead of the committed one."""
        return self.committable is not None and self.committable != self.committed


class OffsetCommitter:
    """Commits the committable offsets of a consumer's partitions, coalescing requests.

    Args:
        consumer: returns the running aiokafka consumer.
        partitions: the live offset bookkeeping, by partition.
        metrics: where to count commits (ok, failed).
        interval: minimum seconds between two commits of the commit loop.
        log_interval: seconds between two log lines about failing commits.
    """

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        partitions: Mapping[TopicPartition, PartitionOffsets],
        metrics: ConsumerMetrics,
        *,
        interval: float,
        log_interval: float,
    ) -> None:
        self._consumer = consumer
        self._partitions = partitions
        self._metrics = metrics
        self._interval = interval
        self._failures = LogThrottle(log_interval)
        self._lock = asyncio.Lock()
        self.wanted = asyncio.Event()
        """Set to ask the commit loop for a commit soon."""

    async def run(self) -> None:
        """Commit whenever `wanted` is set, at most once per `interval`; runs until cancelled."""
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            await self.commit()
            # Coalesce: completions during this pause share the next commit.
            await asyncio.sleep(self._interval)

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit what advanced on `partitions` (default all); a failure asks for a retry."""
        async with self._lock:
            wanted = self._partitions if partitions is None else partitions
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp in wanted:
                state = self._partitions.get(tp)
                if state is not None and state.needs_commit() and state.committable is not None:
                    offsets[tp] = OffsetAndMetadata(state.committable, "")
            if not offsets:
                return
            try:
                await self._consumer().commit(offsets)  # pyright: ignore[reportArgumentType]
            except (KafkaError, AssertionError) as exc:
                # A rebalance is in progress or we lost the group; the next commit retries.
                self._metrics.commits.labels(outcome="failed").inc()
                suppressed = self._failures.allow("commit")
                if suppressed is not None:
                    logger.warning(
                        "commit failed (%s); will retry [%d similar suppressed]", exc, suppressed
                    )
                self.wanted.set()
                return
            for tp, meta in offsets.items():
                state = self._partitions.get(tp)
                if state is not None:
                    state.committed = meta.offset
            self._metrics.commits.labels(outcome="ok").inc()
