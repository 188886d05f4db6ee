"""The records a consumer is processing: one task each, tracked per partition.

A record's task waits for its key's turn (when keys are ordered), does its work,
then marks its offset finished so the committable offset can advance.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition  # pyright: ignore[reportMissingTypeStubs]

from ferryman_runtime.key_order import KeyOrder, Turn
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.offsets import PartitionOffsets

Work = Callable[[], Awaitable[str | None]]
"""What is done for one record; returning means the record is finished. It returns the
error type the record settled with (dead-lettered, handed over), None when it succeeded."""


class InFlight:
    """Tasks of the records in flight and the offsets of the assigned partitions.

    Args:
        max_in_flight: how many records may be in flight at once.
        key_ordered: run records of one key (per partition) one at a time, in offset order.
        group_id: the consumer group (a label of the consumed-records counter).
        metrics: where to count records, their processing time and the in-flight gauge.
        on_advance: called when a partition's committable offset advanced.
        on_bug: called when a record's work raised (a bug: the record stays unfinished).
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        key_ordered: bool,
        group_id: str,
        metrics: ConsumerMetrics,
        on_advance: Callable[[], None],
        on_bug: Callable[[BaseException], None],
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.partitions: dict[TopicPartition, PartitionOffsets] = {}
        """Offset bookkeeping of each assigned partition."""
        self.slot_freed = asyncio.Event()
        """Set whenever a record finishes or is cancelled."""
        self._tasks: dict[tuple[TopicPartition, int], asyncio.Task[None]] = {}
        self._key_order = KeyOrder() if key_ordered else None
        self._group_id = group_id
        self._metrics = metrics
        metrics.in_flight_limit.set(max_in_flight)
        self._on_advance = on_advance
        self._on_bug = on_bug
        self.peak = 0
        """The most records ever in flight at once."""

    @property
    def count(self) -> int:
        """Records in flight now (including those waiting for their key's turn)."""
        return len(self._tasks)

    @property
    def free(self) -> int:
        """How many more records may start now."""
        return self.max_in_flight - len(self._tasks)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The tasks of the records in flight."""
        return list(self._tasks.values())

    def dispatch(
        self,
        tp: TopicPartition,
        offsets: PartitionOffsets,
        offset: int,
        key: bytes | None,
        work: Work,
    ) -> None:
        """Start `work` for the record at `offset` of `tp` (offsets in increasing order).

        Raises:
            ValueError: `offset` is not above the offsets dispatched before on `tp`.
        """
        offsets.add(offset)
        self._metrics.consumed.labels(tp.topic, self._group_id).inc()
        turn = self._key_order.turn(tp, key) if self._key_order is not None else None
        self._tasks[(tp, offset)] = asyncio.create_task(self._run(tp, offset, offsets, work, turn))
        self.peak = max(self.peak, len(self._tasks))
        self._metrics.in_flight.set(len(self._tasks))

    def drop(self, tp: TopicPartition) -> int:
        """Forget `tp` and cancel its records (uncommitted); return how many were cancelled."""
        tasks = [task for (t, _), task in self._tasks.items() if t == tp]
        for task in tasks:
            task.cancel()
        if self._key_order is not None:
            self._key_order.forget(tp)
        self.partitions.pop(tp, None)
        return len(tasks)

    async def _run(
        self,
        tp: TopicPartition,
        offset: int,
        offsets: PartitionOffsets,
        work: Work,
        turn: Turn | None,
    ) -> None:
        started = time.monotonic()
        settled: str | None = None  # the error type; stays None when cancelled (redelivered)
        try:
            if turn is not None:
                await turn.wait()
            settled = await work() or ""
            if offsets.finish(offset):
                self._on_advance()
        except Exception as exc:
            settled = type(exc).__name__
            self._on_bug(exc)
        finally:
            if settled is not None:
                self._metrics.process_duration.labels(tp.topic, settled).observe(
                    time.monotonic() - started
                )
            if turn is not None:
                turn.release()
            # A partition lost and regained may already run a new task for this offset.
            if self._tasks.get((tp, offset)) is asyncio.current_task():
                del self._tasks[(tp, offset)]
            self._metrics.in_flight.set(len(self._tasks))
            self.slot_freed.set()
