"""Consumer lag: committed and fetched positions against end offsets, fallbacks, export."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from ferryman_runtime.consumer_lag import ConsumerLagCollector, LagTracker, PartitionLag
from ferryman_runtime.offsets import PartitionOffsets

A = TopicPartition("requests", 0)
B = TopicPartition("requests", 1)


class FakeConsumer:
    """Answers the offset requests of `AIOKafkaConsumer` from dicts, counting `committed`."""

    def __init__(
        self,
        ends: dict[TopicPartition, int],
        *,
        group_committed: dict[TopicPartition, int] | None = None,
        beginnings: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.ends = ends
        self.group_committed = group_committed or {}
        self.beginnings = beginnings or {}
        self.committed_asks: list[TopicPartition] = []
        self.error: Exception | None = None
        self.hang = False
        self.requests: asyncio.Queue[list[TopicPartition]] = asyncio.Queue()

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.requests.put_nowait(partitions)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return {tp: self.ends[tp] for tp in partitions}

    async def committed(self, tp: TopicPartition) -> int | None:
        self.committed_asks.append(tp)
        return self.group_committed.get(tp)

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.beginnings.get(tp, 0) for tp in partitions}


def _tracker(
    consumer: FakeConsumer, partitions: dict[TopicPartition, PartitionOffsets], **options: Any
) -> LagTracker:
    return LagTracker(
        lambda: cast(AIOKafkaConsumer, consumer),
        partitions,
        interval=options.pop("interval", 10.0),
        clock=lambda: 1_700_000_000.0,
        **options,
    )


def _offsets(*, committed: int | None = None, fetched: list[int] | None = None) -> PartitionOffsets:
    state = PartitionOffsets()
    state.committed = committed
    for offset in fetched or []:
        state.add(offset)
    return state


async def test_lag_counts_from_the_kits_commit_and_backlog_from_the_next_fetch() -> None:
    partitions = {A: _offsets(committed=10, fetched=[10, 11, 12])}
    tracker = _tracker(FakeConsumer({A: 20}), partitions)

    await tracker.refresh()

    assert tracker.lags() == {A: PartitionLag(lag=10, backlog=7)}
    assert tracker.totals() == (10, 7)


async def test_without_a_commit_of_its_own_the_groups_offset_is_asked_once_per_assignment() -> None:
    consumer = FakeConsumer({A: 50}, group_committed={A: 40})
    partitions = {A: PartitionOffsets()}
    tracker = _tracker(consumer, partitions)

    await tracker.refresh()
    await tracker.refresh()

    assert tracker.lags() == {A: PartitionLag(lag=10, backlog=10)}
    assert consumer.committed_asks == [A]
    tracker.reassigned()
    await tracker.refresh()
    assert consumer.committed_asks == [A, A]


async def test_a_group_with_no_committed_offset_counts_from_the_partitions_beginning() -> None:
    consumer = FakeConsumer({A: 30}, beginnings={A: 12})
    tracker = _tracker(consumer, {A: PartitionOffsets()})

    await tracker.refresh()

    assert tracker.lags() == {A: PartitionLag(lag=18, backlog=18)}


async def test_a_revoked_partition_leaves_the_lag_and_the_export() -> None:
    partitions = {A: _offsets(committed=0), B: _offsets(committed=0)}
    consumer = FakeConsumer({A: 5, B: 7})
    tracker = _tracker(consumer, partitions)
    registry = CollectorRegistry()
    registry.register(ConsumerLagCollector(tracker, "g1"))
    await tracker.refresh()

    labels = {
        "messaging_destination_name": "requests",
        "messaging_destination_partition_id": "1",
        "messaging_consumer_group_name": "g1",
    }
    assert registry.get_sample_value("ferryman_kafka_consumer_lag_messages", labels) == 7.0
    assert registry.get_sample_value("ferryman_kafka_consumer_backlog_messages", labels) == 7.0
    refreshed = "ferryman_kafka_consumer_lag_refresh_timestamp_seconds"
    assert registry.get_sample_value(refreshed) == 1_700_000_000.0

    del partitions[B]  # revoked, before the next refresh

    assert registry.get_sample_value("ferryman_kafka_consumer_lag_messages", labels) is None
    assert tracker.totals() == (5, 5)


async def test_a_failed_refresh_keeps_the_last_values_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer({A: 9})
    tracker = _tracker(consumer, {A: _offsets(committed=4)}, interval=0.01)
    await tracker.refresh()
    consumer.error = RuntimeError("broker gone")
    consumer.ends[A] = 100

    task = asyncio.create_task(tracker.run())
    try:
        for _ in range(2):  # a second request: the loop survived the first failure
            await asyncio.wait_for(consumer.requests.get(), 5)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert tracker.lags() == {A: PartitionLag(lag=5, backlog=5)}
    assert tracker.refreshed_at == 1_700_000_000.0
    assert "consumer lag not refreshed (RuntimeError: broker gone)" in caplog.text


async def test_an_end_offsets_request_that_hangs_times_out() -> None:
    consumer = FakeConsumer({A: 9})
    consumer.hang = True
    tracker = _tracker(consumer, {A: _offsets(committed=4)}, timeout=0.05)

    with pytest.raises(TimeoutError):
        await tracker.refresh()
    assert tracker.totals() is None


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        _tracker(FakeConsumer({}), {}, interval=0)
