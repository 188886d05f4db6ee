"""`ParallelConsumer` through a broker outage, on a private broker this test can stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import CollectorRegistry

from ferryman.topics import ensure_topics
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.parallel_consumer import ParallelConsumer
from tests.kafka_brokers import PrivateBroker, private_broker

pytestmark = pytest.mark.integration

OUTAGE = 12.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker only this test uses (it stops it)."""
    with private_broker(tmp_path) as private:
        private.up()
        yield private


class Lines(logging.Handler):
    """Counts log lines of the Kafka client and of the consumer."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("aiokafka", "ferryman_runtime")):
            self.records.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Log lines at INFO and above, as a worker logs them."""
    handler = Lines()
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
async def producer(broker: PrivateBroker) -> AsyncIterator[AIOKafkaProducer]:
    """A producer on the private broker."""
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def _wait_for(condition: object, timeout: float) -> None:
    """Poll `condition()` (consumer readiness signals no event) for `timeout` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s")
        await asyncio.sleep(0.1)


async def test_an_outage_is_reported_not_ready_logged_sparingly_and_loses_nothing(
    broker: PrivateBroker, producer: AIOKafkaProducer, lines: Lines, unique: str
) -> None:
    topic = f"outage-{unique}"
    await ensure_topics(broker.bootstrap, [topic], partitions=2, replication_factor=1)
    values: list[bytes] = []
    six_handled = asyncio.Event()

    async def handler(record: ConsumerRecord[bytes, bytes], attempt: int) -> None:
        values.append(record.value or b"")
        if len(values) >= 6:
            six_handled.set()

    consumer = ParallelConsumer(
        bootstrap_servers=broker.bootstrap,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handler,
        max_in_flight=10,
        metrics=ConsumerMetrics(CollectorRegistry()),
        session_timeout_ms=6000,
    )
    await consumer.start()
    try:
        for n in range(3):
            await producer.send_and_wait(topic, b"before-%d" % n)
        await _wait_for(lambda: len(values) == 3 and consumer.ready, 30)

        await asyncio.to_thread(broker.down)
        during = len(lines.records)
        await _wait_for(lambda: not consumer.ready, 10)
        await asyncio.sleep(OUTAGE)  # the outage itself: what the consumer does meanwhile
        logged = lines.records[during:]
        assert not consumer.ready
        assert consumer.failure is None
        # Without throttling aiokafka alone logs ~90 lines a second here.
        assert len(logged) < 30, [r.getMessage() for r in logged]

        await asyncio.to_thread(broker.up)
        await _wait_for(lambda: consumer.ready, 60)
        for n in range(3):
            await producer.send_and_wait(topic, b"after-%d" % n)
        await asyncio.wait_for(six_handled.wait(), 60)
        assert sorted(values) == sorted(
            [b"before-0", b"before-1", b"before-2", b"after-0", b"after-1", b"after-2"]
        )
    finally:
        await consumer.stop(grace_period=1.0)
