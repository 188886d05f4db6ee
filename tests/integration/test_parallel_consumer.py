"""`ParallelConsumer` against the real broker: commits, backpressure, rebalances, key
order, bounded retries, undecodable records and loop supervision."""

from __future__ import annotations

import asyncio
import functools
import inspect
import struct
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from prometheus_client import CollectorRegistry

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman.topics import ensure_topics
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.parallel_consumer import ParallelConsumer
from ferryman_runtime.undecodable import UndecodableRecord

pytestmark = pytest.mark.integration

Record = ConsumerRecord[bytes, bytes]
WAIT = 30.0
BAD_HEADER_KEY = b"\xff\xfe-not-utf8"


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT
) -> None:
    """Poll state that signals no event (broker offsets, group membership) until
    `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def all_committed(
    admin: AIOKafkaAdminClient, group: str, expected: dict[TopicPartition, int]
) -> bool:
    offsets = await admin.list_consumer_group_offsets(group, partitions=list(expected))
    return all(tp in offsets and offsets[tp].offset == o for tp, o in expected.items())


async def committed_is(
    admin: AIOKafkaAdminClient, group: str, tp: TopicPartition, expected: int
) -> bool:
    return await committed(admin, group, tp) == expected


class Gates:
    """Per-offset events: the handler reports `started` and waits for `release`."""

    def __init__(self) -> None:
        self.started: defaultdict[tuple[int, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.release: defaultdict[tuple[int, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.done: defaultdict[tuple[int, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.cancelled: list[tuple[int, int]] = []
        self.order: list[tuple[int, int]] = []

    async def handler(self, record: Record, attempt: int) -> None:
        where = (record.partition, record.offset)
        self.order.append(where)
        self.started[where].set()
        try:
            await self.release[where].wait()
        except asyncio.CancelledError:
            self.cancelled.append(where)
            raise
        self.done[where].set()

    async def wait_started(self, *where: tuple[int, int]) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.started[w].wait() for w in where)), WAIT)

    async def finish(self, where: tuple[int, int]) -> None:
        self.release[where].set()
        await asyncio.wait_for(self.done[where].wait(), WAIT)


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer (acks=all) on the test broker."""
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, to read committed offsets from the broker."""
    a = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await a.start()
    yield a
    await a.close()


Make = Callable[..., ParallelConsumer]


@pytest.fixture
async def make(kafka_bootstrap: str) -> AsyncIterator[Make]:
    """Build consumers on the test broker; all are stopped at teardown."""
    made: list[ParallelConsumer] = []

    def make_consumer(topic: str, group: str, handler: Any, **options: Any) -> ParallelConsumer:
        options.setdefault("max_in_flight", 10)
        options.setdefault("session_timeout_ms", 6000)
        options.setdefault("retry_backoff", (0.01, 0.05))
        options.setdefault("metrics", ConsumerMetrics(CollectorRegistry()))
        consumer = ParallelConsumer(
            bootstrap_servers=kafka_bootstrap,
            topics=[topic],
            group_id=group,
            handler=handler,
            **options,
        )
        made.append(consumer)
        return consumer

    yield make_consumer
    for consumer in made:
        await consumer.stop(grace_period=1.0)


async def new_topic(bootstrap: str, unique: str, partitions: int = 1) -> str:
    topic = f"pc-{unique}"
    await ensure_topics(bootstrap, [topic], partitions=partitions, replication_factor=1)
    return topic


async def committed(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset for `tp`, read from the broker (None if none)."""
    offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
    meta = offsets.get(tp)
    return None if meta is None or meta.offset < 0 else meta.offset


async def send(
    producer: AIOKafkaProducer, topic: str, partition: int, *values: bytes, key: bytes | None = None
) -> None:
    for value in values:
        await producer.send_and_wait(topic, value, key=key, partition=partition)


async def send_bad_header_record(producer: AIOKafkaProducer, topic: str, partition: int) -> None:
    """Append one record whose header key is not UTF-8: aiokafka's producer only takes str
    keys, so the batch is built with a placeholder key, patched and sent as a raw Produce."""
    placeholder = "x" * len(BAD_HEADER_KEY)
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    builder.append(0, None, b"bad-key", b"bad", [(placeholder, b"v"), ("ok", b"1")])
    batch = builder.build()
    at = batch.find(placeholder.encode())
    batch[at : at + len(BAD_HEADER_KEY)] = BAD_HEADER_KEY
    struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[21:])))  # CRC over attributes..end
    tp = TopicPartition(topic, partition)
    await producer.client._wait_on_metadata(topic)
    leader = producer.client.cluster.leader_for_partition(tp)
    request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, bytes(batch))])])
    response = await producer.client.send(leader, request)
    assert response.topics[0][1][0][1] == 0, response


async def test_commits_stop_at_the_lowest_unfinished_offset(
    kafka_bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    make: Make,
) -> None:
    topic = await new_topic(kafka_bootstrap, unique, partitions=2)
    group = f"g-{unique}"
    await send(producer, topic, 0, b"a", b"b", b"c")
    await send(producer, topic, 1, b"d")
    gates = Gates()
    consumer = make(topic, group, gates.handler)
    await consumer.start()
    await gates.wait_started((0, 0), (0, 1), (0, 2), (1, 0))

    await gates.finish((0, 2))
    await gates.finish((0, 1))
    await gates.finish((1, 0))  # its commit carries whatever else is committable
    await wait_until(lambda: committed_is(admin, group, TopicPartition(topic, 1), 1))
    assert await committed(admin, group, TopicPartition(topic, 0)) is None

    await gates.finish((0, 0))
    await wait_until(lambda: committed_is(admin, group, TopicPartition(topic, 0), 3))


async def test_pauses_at_max_in_flight_and_resumes_as_records_finish(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    await send(producer, topic, 0, *(b"r%d" % i for i in range(5)))
    gates = Gates()
    consumer = make(topic, f"g-{unique}", gates.handler, max_in_flight=2)
    await consumer.start()

    await gates.wait_started((0, 0), (0, 1))
    await wait_until(lambda: consumer.status()["paused"])
    assert gates.order == [(0, 0), (0, 1)]
    assert consumer.in_flight == 2

    await gates.finish((0, 0))
    await gates.wait_started((0, 2))
    for offset in (1, 2, 3, 4):
        await gates.wait_started((0, offset))
        await gates.finish((0, offset))
    assert consumer.peak_in_flight == 2
    assert sorted(gates.order) == [(0, i) for i in range(5)]


async def test_a_partition_lost_to_a_new_member_is_cancelled_and_redelivered_there(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique, partitions=2)
    group = f"g-{unique}"
    await send(producer, topic, 0, b"p0")
    await send(producer, topic, 1, b"p1")
    first_gates, second_gates = Gates(), Gates()
    first = make(topic, group, first_gates.handler)
    await first.start()
    await first_gates.wait_started((0, 0), (1, 0))

    second = make(topic, group, second_gates.handler)
    await second.start()
    await wait_until(lambda: len(first.assignment) == 1 and len(second.assignment) == 1)
    (moved,) = [(tp.partition, 0) for tp in second.assignment]
    await second_gates.wait_started(moved)

    assert first_gates.cancelled == [moved]
    assert second_gates.order == [moved]
    kept = (1 - moved[0], 0)
    await first_gates.finish(kept)  # work on the partition it kept was not disturbed
    await second_gates.finish(moved)


async def test_records_of_one_key_run_one_at_a_time_in_offset_order(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    for value, key in [
        (b"0", b"k1"),
        (b"1", b"k2"),
        (b"2", b"k1"),
        (b"3", None),
        (b"4", None),
        (b"5", b"k1"),
    ]:
        await send(producer, topic, 0, value, key=key)
    gates = Gates()
    consumer = make(topic, f"g-{unique}", gates.handler, key_ordered=True)
    await consumer.start()

    await gates.wait_started((0, 0), (0, 1), (0, 3), (0, 4))  # other keys and no key: at once
    await wait_until(lambda: consumer.in_flight == 6)  # 2 and 5 wait for their turn
    assert sorted(gates.order) == [(0, 0), (0, 1), (0, 3), (0, 4)]

    await gates.finish((0, 0))
    await gates.wait_started((0, 2))
    assert (0, 5) not in gates.order
    await gates.finish((0, 2))
    await gates.wait_started((0, 5))
    assert [w for w in gates.order if w[1] in (0, 2, 5)] == [(0, 0), (0, 2), (0, 5)]
    for offset in (1, 3, 4, 5):
        await gates.finish((0, offset))


async def test_a_record_that_keeps_failing_is_handed_to_on_exhausted_once_then_committed(
    kafka_bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    make: Make,
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    group = f"g-{unique}"
    await send(producer, topic, 0, b"poison", b"fine")
    attempts: list[tuple[int, int]] = []
    exhausted: list[tuple[int, int, str]] = []
    handled = asyncio.Event()

    async def handler(record: Record, attempt: int) -> None:
        attempts.append((record.offset, attempt))
        if record.value == b"poison":
            raise RuntimeError(f"boom {attempt}")
        handled.set()

    async def on_exhausted(record: Record, made: int, error: BaseException) -> None:
        exhausted.append((record.offset, made, str(error)))

    registry = CollectorRegistry()
    consumer = make(
        topic,
        group,
        handler,
        max_attempts=3,
        on_exhausted=on_exhausted,
        metrics=ConsumerMetrics(registry),
    )
    await consumer.start()
    await asyncio.wait_for(handled.wait(), WAIT)
    tp = TopicPartition(topic, 0)
    await wait_until(lambda: committed_is(admin, group, tp, 2))

    assert exhausted == [(0, 3, "boom 3")]
    assert [a for o, a in attempts if o == 0] == [1, 2, 3]
    assert (
        registry.get_sample_value(
            "ferryman_messages_exhausted_total", {"messaging_destination_name": topic}
        )
        == 1
    )


async def test_a_non_retryable_error_is_handed_over_without_more_attempts(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    await send(producer, topic, 0, b"bad request")
    exhausted: asyncio.Queue[tuple[int, BaseException]] = asyncio.Queue()

    async def handler(record: Record, attempt: int) -> None:
        raise FerrymanError(ErrorCode.INVALID_REQUEST, "cannot be sent as it is")

    async def on_exhausted(record: Record, made: int, error: BaseException) -> None:
        await exhausted.put((made, error))

    consumer = make(topic, f"g-{unique}", handler, max_attempts=5, on_exhausted=on_exhausted)
    await consumer.start()
    made, error = await asyncio.wait_for(exhausted.get(), WAIT)
    assert made == 1
    assert isinstance(error, FerrymanError)


async def test_on_exhausted_failures_are_retried_and_nothing_is_committed_until_it_succeeds(
    kafka_bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    make: Make,
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    group = f"g-{unique}"
    tp = TopicPartition(topic, 0)
    await send(producer, topic, 0, b"poison")
    seen_committed: list[int | None] = []
    parked = asyncio.Event()

    async def handler(record: Record, attempt: int) -> None:
        raise RuntimeError("always")

    async def on_exhausted(record: Record, made: int, error: BaseException) -> None:
        seen_committed.append(await committed(admin, group, tp))
        if len(seen_committed) < 3:
            raise ConnectionError("dead-letter topic unreachable")
        parked.set()

    consumer = make(topic, group, handler, max_attempts=2, on_exhausted=on_exhausted)
    await consumer.start()
    await asyncio.wait_for(parked.wait(), WAIT)
    await wait_until(lambda: committed_is(admin, group, tp, 1))
    assert seen_committed == [None, None, None]


async def test_a_record_with_a_non_utf8_header_key_is_handed_over_and_nothing_else_is_lost(
    kafka_bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    make: Make,
) -> None:
    # The failing getmany() drops records it already took from partitions it visited
    # before the bad one, in an order aiokafka shuffles: several partitions and three
    # groups make it near certain that some group meets that case.
    topic = await new_topic(kafka_bootstrap, unique, partitions=4)
    await send(producer, topic, 0, b"before")
    await send_bad_header_record(producer, topic, 0)
    await send(producer, topic, 0, b"after-1", b"after-2")
    for partition in (1, 2, 3):
        await send(producer, topic, partition, b"other-0", b"other-1", b"other-2")
    groups = [f"g-{unique}-{n}" for n in range(3)]
    handled: dict[str, list[tuple[int, int, bytes | None]]] = {g: [] for g in groups}
    undecodable: dict[str, list[UndecodableRecord]] = {g: [] for g in groups}
    consumers: list[ParallelConsumer] = []
    for group in groups:

        async def handler(record: Record, attempt: int, group: str = group) -> None:
            handled[group].append((record.partition, record.offset, record.value))

        async def on_undecodable(record: UndecodableRecord, group: str = group) -> None:
            undecodable[group].append(record)

        consumers.append(make(topic, group, handler, on_undecodable=on_undecodable))
    await asyncio.gather(*(consumer.start() for consumer in consumers))

    expected = {TopicPartition(topic, 0): 4, **{TopicPartition(topic, p): 3 for p in (1, 2, 3)}}
    for group in groups:
        await wait_until(functools.partial(all_committed, admin, group, expected))
        assert sorted(handled[group]) == [
            (0, 0, b"before"),
            (0, 2, b"after-1"),
            (0, 3, b"after-2"),
            *((p, o, b"other-%d" % o) for p in (1, 2, 3) for o in range(3)),
        ]
        (bad,) = undecodable[group]
        assert (bad.topic, bad.partition, bad.offset) == (topic, 0, 1)
        assert (bad.key, bad.value) == (b"bad-key", b"bad")
        assert bad.headers == ((BAD_HEADER_KEY, b"v"), (b"ok", b"1"))
        assert isinstance(bad.error, UnicodeDecodeError)
    assert all(consumer.ready for consumer in consumers)


async def test_a_dead_fetch_loop_is_reported_and_the_consumer_is_not_ready(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique)
    await send_bad_header_record(producer, topic, 0)  # with no on_undecodable: fatal
    consumer = make(topic, f"g-{unique}", Gates().handler)
    await consumer.start()

    await asyncio.wait_for(consumer.failed.wait(), WAIT)
    assert isinstance(consumer.failure, RuntimeError)
    assert f"{topic}:0@0" in str(consumer.failure)
    assert not consumer.ready
    assert consumer.status()["failure"].startswith("RuntimeError")


async def test_replicas_beyond_the_partition_count_are_ready_with_no_partitions(
    kafka_bootstrap: str, unique: str, make: Make
) -> None:
    topic = await new_topic(kafka_bootstrap, unique, partitions=1)
    group = f"g-{unique}"
    first = make(topic, group, Gates().handler)
    second = make(topic, group, Gates().handler)
    assert not first.ready
    await first.start()
    await wait_until(lambda: first.ready)
    await second.start()
    await wait_until(
        lambda: first.ready and second.ready and len(first.assignment) + len(second.assignment) == 1
    )
    await second.stop(grace_period=1.0)
    assert not second.ready
