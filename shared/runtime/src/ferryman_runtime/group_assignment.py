"""A consumer's place in its group: the partitions assigned to it, and its membership.

`GroupAssignment` is `ParallelConsumer`'s rebalance listener. On revocation it commits
what is finished of the revoked partitions; on assignment it cancels, uncommitted, the
work of partitions that did not come back, tracks offsets of new ones (kept ones resume
after what is already held), pauses them while the consumer is paused, and updates the
consumer's share of its topics' partitions.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import (  # pyright: ignore[reportMissingTypeStubs]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)

from ferryman_runtime.in_flight import InFlight
from ferryman_runtime.offsets import OffsetCommitter, PartitionOffsets

# Logs under the consumer it serves: its lines belong with the consumer's.
logger = logging.getLogger("ferryman_runtime.parallel_consumer")


class GroupAssignment(ConsumerRebalanceListener):  # pyright: ignore[reportUntypedBaseClass]
    """Keeps a consumer's partition bookkeeping in step with the group's assignments.

    Args:
        consumer: returns the started consumer.
        topics: the topics the consumer subscribes to (for its share).
        in_flight: the records in flight and the offsets of the assigned partitions.
        committer: commits what is finished of revoked partitions.
        paused: whether the consumer is paused (newly assigned partitions must be too).
        on_assigned: called at every assignment, before the partitions are tracked.
    """

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        topics: list[str],
        in_flight: InFlight,
        committer: OffsetCommitter,
        paused: Callable[[], bool],
        on_assigned: Callable[[], None] = lambda: None,
    ) -> None:
        self._consumer = consumer
        self._topics = topics
        self._in_flight = in_flight
        self._offsets = in_flight.partitions
        self._committer = committer
        self._paused = paused
        self._on_assigned = on_assigned
        self._joined = False
        self._share = 0.0
        self._assigned_once = asyncio.Event()

    @property
    def joined(self) -> bool:
        """Whether the group completed a join with this member at least once."""
        return self._joined

    @property
    def share(self) -> float:
        """Assigned partitions ÷ all partitions of the topics (0 before any)."""
        return self._share

    @property
    def assigned_once(self) -> asyncio.Event:
        """Set once the group assigned partitions (possibly none)."""
        return self._assigned_once

    async def on_partitions_revoked(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, revoked: set[TopicPartition]
    ) -> None:
        """Commit what is finished of the revoked partitions."""
        if revoked:
            await self._committer.commit(revoked)

    async def on_partitions_assigned(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, assigned: set[TopicPartition]
    ) -> None:
        """Drop the work of lost partitions, track new ones, update the share."""
        consumer = self._consumer()
        self._on_assigned()
        lost = set(self._offsets) - assigned
        for tp in lost:
            cancelled = self._in_flight.drop(tp)
            if cancelled:
                logger.warning(
                    "partition %s:%d lost; cancelled %d", tp.topic, tp.partition, cancelled
                )
        for tp in assigned:
            state = self._offsets.get(tp)
            if state is None:
                self._offsets[tp] = PartitionOffsets()
            elif state.next_fetch is not None:
                # Kept across the rebalance: resume after what we already hold.
                consumer.seek(tp, state.next_fetch)
        if self._paused():
            consumer.pause(*assigned)
        self._update_share(consumer)
        self._joined = True
        self._assigned_once.set()
        logger.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    def _update_share(self, consumer: AIOKafkaConsumer) -> None:
        total = 0
        for topic in self._topics:
            partitions = consumer.partitions_for_topic(topic)
            total += len(partitions) if partitions else 0
        self._share = min(1.0, len(self._offsets) / total) if total else 0.0


def is_group_member(consumer: AIOKafkaConsumer) -> bool:
    """Whether the group coordinator is reachable and still knows this member."""
    # aiokafka exposes no membership state; these GroupCoordinator attributes (read in
    # 0.14) are None / -1 while the coordinator is unreachable / the member is unknown.
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    return coordinator.coordinator_id is not None and coordinator.generation >= 0
