"""Consumer lag against the real broker: it counts what a paused consumer has not done
yet, from end offsets a paused consumer does not fetch, and drops to 0 once all is done."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from ferryman_runtime.consumer_lag import ConsumerLagCollector
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.parallel_consumer import ParallelConsumer
from tests.integration.test_parallel_consumer import Gates, new_topic, send, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer (acks=all) on the test broker."""
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def test_lag_rises_while_paused_at_the_limit_and_returns_to_zero(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    group = f"lag-{unique}"
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    gates = Gates()
    consumer = ParallelConsumer(
        bootstrap_servers=kafka_bootstrap,
        topics=[topic],
        group_id=group,
        handler=gates.handler,
        max_in_flight=2,
        metrics=metrics,
        session_timeout_ms=6000,
        lag_interval=0.1,
    )
    registry.register(ConsumerLagCollector(consumer.lag, group))
    labels = {
        "messaging_destination_name": topic,
        "messaging_destination_partition_id": "0",
        "messaging_consumer_group_name": group,
    }

    def lag() -> tuple[float | None, float | None]:
        return (
            registry.get_sample_value("ferryman_kafka_consumer_lag_messages", labels),
            registry.get_sample_value("ferryman_kafka_consumer_backlog_messages", labels),
        )

    await send(producer, topic, 0, b"a", b"b")
    await consumer.start()
    try:
        await gates.wait_started((0, 0), (0, 1))
        await send(producer, topic, 0, b"c", b"d", b"e")  # the consumer is full: not fetched

        # 5 records, none committed; 2 in flight, 3 not fetched.
        await wait_until(lambda: lag() == (5.0, 3.0))
        assert registry.get_sample_value("ferryman_consumer_paused") == 1.0
        status = consumer.status()
        assert (status["lag"], status["backlog"]) == (5, 3)
        assert consumer.lag.lags().keys() == {TopicPartition(topic, 0)}

        for offset in range(2, 5):
            gates.release[(0, offset)].set()
        await gates.finish((0, 0))
        await gates.finish((0, 1))
        await gates.wait_started((0, 2), (0, 3), (0, 4))

        await wait_until(lambda: lag() == (0.0, 0.0))
        refreshed = "ferryman_kafka_consumer_lag_refresh_timestamp_seconds"
        assert (registry.get_sample_value(refreshed) or 0) > 0
    finally:
        await consumer.stop(grace_period=1.0)
