"""Consumer lag of the partitions a consumer holds: what is left to do, and what is not
yet fetched.

Records run concurrently, so the committed lag (end offset minus committed offset) is
the records in flight plus those not yet fetched: the outstanding work an autoscaler
should follow. The backlog (end offset minus the next offset to fetch) is only the
part not fetched yet.

End offsets come from a ListOffsets request (`end_offsets`), not from aiokafka's
`highwater`: the high watermark is refreshed by fetch responses only, so it goes stale
exactly when the consumer pauses at `max_in_flight`, which is when lag matters. The
committed offset is the kit's own last commit (`PartitionOffsets.committed`); before
the first one of an assignment the group's committed offset is asked once, and with
none the partition's beginning counts (`auto_offset_reset=earliest`).
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryman_runtime.log_throttle import LogThrottle
from ferryman_runtime.offsets import PartitionOffsets

logger = logging.getLogger("ferryman_runtime.parallel_consumer")

REFRESH_TIMEOUT = 5.0
"""Seconds one broker request of a refresh may take (`end_offsets` may block on a
partition without a leader)."""


@dataclass(frozen=True)
class PartitionLag:
    """The lag of one partition, in records."""

    lag: int
    """End offset minus committed offset: records in flight plus records not fetched."""
    backlog: int
    """End offset minus the next offset to fetch: records not fetched yet."""


class LagTracker:
    """Refreshes the lag of a consumer's assigned partitions on an interval.

    A failed refresh is logged (throttled) and keeps the last values and their time.

    Args:
        consumer: returns the started consumer.
        partitions: the offset bookkeeping of the assigned partitions (its keys are the
            assignment).
        interval: seconds between refreshes (keep it below the scrape interval).
        timeout: seconds each broker request of a refresh may take.
        log_interval: seconds between two log lines about failing refreshes.
        clock: Unix time of a refresh (injected by tests).
    """

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        partitions: Mapping[TopicPartition, PartitionOffsets],
        *,
        interval: float,
        timeout: float = REFRESH_TIMEOUT,
        log_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be above 0, got {interval!r}")
        self._consumer = consumer
        self._partitions = partitions
        self._interval = interval
        self._timeout = timeout
        self._failures = LogThrottle(log_interval)
        self._clock = clock
        self._lags: dict[TopicPartition, PartitionLag] = {}
        self._group_committed: dict[TopicPartition, int | None] = {}
        self.refreshed_at: float | None = None
        """Unix time of the last successful refresh, None before the first."""

    def reassigned(self) -> None:
        """Forget the group's committed offsets asked so far (call on every assignment)."""
        self._group_committed.clear()

    def lags(self) -> dict[TopicPartition, PartitionLag]:
        """The last lag of each currently assigned partition (revoked ones are left out)."""
        return {tp: lag for tp, lag in self._lags.items() if tp in self._partitions}

    def totals(self) -> tuple[int, int] | None:
        """`(lag, backlog)` summed over the assigned partitions; None before a refresh."""
        if self.refreshed_at is None:
            return None
        lags = self.lags().values()
        return sum(p.lag for p in lags), sum(p.backlog for p in lags)

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled; never raises otherwise."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # lag is advisory: a failure must not stop consumption
                suppressed = self._failures.allow("refresh")
                if suppressed is not None:
                    logger.warning(
                        "consumer lag not refreshed (%s: %s) [%d similar suppressed]",
                        type(exc).__name__,
                        exc,
                        suppressed,
                    )
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        """Ask the brokers for the end offsets of the assigned partitions and recompute.

        Raises:
            TimeoutError: a broker request took longer than `timeout`.
            aiokafka.errors.KafkaError: a broker request failed.
        """
        consumer = self._consumer()
        assigned = [tp for tp in self._partitions if tp in consumer.assignment()]
        ends: dict[TopicPartition, int] = {}
        if assigned:
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), self._timeout)
        committed = {tp: await self._committed(consumer, tp) for tp in ends}
        unknown = [tp for tp, offset in committed.items() if offset is None]
        if unknown:
            beginnings = await asyncio.wait_for(consumer.beginning_offsets(unknown), self._timeout)
            committed.update({tp: beginnings.get(tp) for tp in unknown})
        lags: dict[TopicPartition, PartitionLag] = {}
        for tp, end in ends.items():
            done = committed.get(tp)
            if done is None:
                continue
            state = self._partitions.get(tp)
            next_fetch = state.next_fetch if state is not None else None
            fetched_to = done if next_fetch is None else max(done, next_fetch)
            lags[tp] = PartitionLag(lag=max(0, end - done), backlog=max(0, end - fetched_to))
        self._lags = lags
        self.refreshed_at = self._clock()

    async def _committed(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        state = self._partitions.get(tp)
        if state is not None and state.committed is not None:
            return state.committed
        if tp not in self._group_committed:
            offset = await asyncio.wait_for(consumer.committed(tp), self._timeout)
            self._group_committed[tp] = offset if isinstance(offset, int) else None
        return self._group_committed[tp]


class ConsumerLagCollector(Collector):
    """`ferryman_kafka_consumer_lag_messages`, `ferryman_kafka_consumer_backlog_messages`
    (per assigned partition) and `ferryman_kafka_consumer_lag_refresh_timestamp_seconds`.

    Args:
        tracker: the consumer's lag.
        group_id: the consumer group (the `messaging_consumer_group_name` label).
    """

    def __init__(self, tracker: LagTracker, group_id: str) -> None:
        self._tracker = tracker
        self._group_id = group_id

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = [
            "messaging_destination_name",
            "messaging_destination_partition_id",
            "messaging_consumer_group_name",
        ]
        lag = GaugeMetricFamily(
            "ferryman_kafka_consumer_lag_messages",
            "Records of an assigned partition not yet committed: in flight plus not fetched.",
            labels=labels,
        )
        backlog = GaugeMetricFamily(
            "ferryman_kafka_consumer_backlog_messages",
            "Records of an assigned partition not yet fetched (end offset minus next fetch).",
            labels=labels,
        )
        refreshed = GaugeMetricFamily(
            "ferryman_kafka_consumer_lag_refresh_timestamp_seconds",
            "Unix time the consumer lag was last refreshed.",
        )
        return lag, backlog, refreshed

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        lag, backlog, refreshed = self._families()
        for tp, value in sorted(
            self._tracker.lags().items(), key=lambda item: (item[0].topic, item[0].partition)
        ):
            labels = [tp.topic, str(tp.partition), self._group_id]
            lag.add_metric(labels, value.lag)
            backlog.add_metric(labels, value.backlog)
        if self._tracker.refreshed_at is not None:
            refreshed.add_metric([], self._tracker.refreshed_at)
        return lag, backlog, refreshed
