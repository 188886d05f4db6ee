"""`TopicFollower` and `CatalogView` against the real broker: where each start mode begins,
what `ready` and `sync()` promise, a failing handler or an undecodable record that stops
nothing, and a follower started before its topic exists."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from ferryman.contracts.mcp import CatalogRecord, ServerEntry, ToolEntry
from ferryman.kafka_config import KafkaConnection
from ferryman.topics import ensure_topics
from ferryman_runtime.catalog_view import CatalogView
from ferryman_runtime.topic_follower import FollowedRecord, Start, TopicFollower
from tests.integration.test_parallel_consumer import BAD_HEADER_KEY, send_bad_header_record

pytestmark = pytest.mark.integration

WAIT = 30.0


class Seen:
    """Records handed over, with an event per awaited value."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.records: list[FollowedRecord] = []
        self._fail_on = fail_on
        self._arrived: dict[bytes, asyncio.Event] = {}

    def __call__(self, record: FollowedRecord) -> None:
        self.records.append(record)
        self._event(record.value or b"").set()
        if record.value == self._fail_on:
            raise RuntimeError("the handler fails on this record")

    def values(self) -> list[bytes | None]:
        return [r.value for r in self.records]

    async def wait_for(self, value: bytes) -> None:
        await asyncio.wait_for(self._event(value).wait(), WAIT)

    def _event(self, value: bytes) -> asyncio.Event:
        return self._arrived.setdefault(value, asyncio.Event())


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def new_topic(bootstrap: str, name: str, partitions: int = 2, compact: bool = False) -> str:
    configs = {name: {"cleanup.policy": "compact"}} if compact else None
    await ensure_topics(
        bootstrap, [name], partitions=partitions, replication_factor=1, configs=configs
    )
    return name


@asynccontextmanager
async def following(
    bootstrap: str,
    topic: str,
    on_record: Callable[[FollowedRecord], None],
    start: Start,
    **options: float,
) -> AsyncIterator[TopicFollower]:
    follower = TopicFollower(
        KafkaConnection(bootstrap_servers=bootstrap),
        topic,
        on_record=on_record,
        client_id=f"follower-{topic}",
        start=start,
        **options,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(follower.run())
    try:
        yield follower
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def produce(
    producer: AIOKafkaProducer, topic: str, *values: bytes, partition: int = 0, **options: int
) -> None:
    for value in values:
        await producer.send_and_wait(topic, value, partition=partition, **options)


async def test_beginning_hands_over_the_whole_topic_before_ready(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-begin-{unique}")
    await produce(producer, topic, b"a0", b"a1", partition=0)
    await produce(producer, topic, b"b0", partition=1)
    seen = Seen()

    async with following(kafka_bootstrap, topic, seen, "beginning") as follower:
        await asyncio.wait_for(follower.ready.wait(), WAIT)
        at_ready = sorted(v or b"" for v in seen.values())

        await produce(producer, topic, b"b1", partition=1)
        await seen.wait_for(b"b1")

    assert at_ready == [b"a0", b"a1", b"b0"]
    assert [(r.partition, r.offset) for r in seen.records if r.partition == 1] == [(1, 0), (1, 1)]


async def test_window_reads_back_only_records_newer_than_the_window(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-window-{unique}")
    now_ms = int(time.time() * 1000)
    await produce(producer, topic, b"old", timestamp_ms=now_ms - 600_000)
    await produce(producer, topic, b"recent", timestamp_ms=now_ms - 5_000)
    await produce(producer, topic, b"other-old", partition=1, timestamp_ms=now_ms - 600_000)
    seen = Seen()

    async with following(kafka_bootstrap, topic, seen, "window", window=60.0) as follower:
        await asyncio.wait_for(follower.ready.wait(), WAIT)
        at_ready = seen.values()

        await produce(producer, topic, b"new", partition=1)
        await follower.sync(WAIT)

    assert at_ready == [b"recent"]
    assert seen.values() == [b"recent", b"new"]
    assert seen.records[0].timestamp_ms == now_ms - 5_000


async def test_end_hands_over_only_new_records_and_sync_sees_one_just_produced(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-end-{unique}")
    await produce(producer, topic, b"before")
    seen = Seen()

    async with following(kafka_bootstrap, topic, seen, "end") as follower:
        await asyncio.wait_for(follower.ready.wait(), WAIT)
        assert seen.values() == []

        await produce(producer, topic, b"k1", partition=1)
        await producer.send_and_wait(topic, b"v", key=b"k", partition=0, headers=[("h", b"1")])
        await follower.sync(WAIT)

        assert seen.values() == [b"k1", b"v"] or seen.values() == [b"v", b"k1"]
        last = next(r for r in seen.records if r.value == b"v")
        assert (last.key, last.headers, last.partition, last.offset) == (
            b"k",
            [("h", b"1")],
            0,
            1,
        )
        await follower.sync(WAIT)  # nothing new: returns at once


async def test_a_failing_handler_skips_its_record_and_the_follower_goes_on(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-fail-{unique}", partitions=1)
    seen = Seen(fail_on=b"boom")

    with caplog.at_level(logging.ERROR, logger="ferryman_runtime.topic_follower"):
        async with following(kafka_bootstrap, topic, seen, "end") as follower:
            await asyncio.wait_for(follower.ready.wait(), WAIT)
            await produce(producer, topic, b"first", b"boom", b"after")
            await follower.sync(WAIT)

    assert seen.values() == [b"first", b"boom", b"after"]
    assert f"record {topic}:0@1 not handled (RuntimeError" in caplog.text


async def test_a_record_with_a_header_key_that_is_not_utf8_is_handed_over_escaped(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-bad-{unique}")
    await produce(producer, topic, b"good")
    await send_bad_header_record(producer, topic, 0)
    await produce(producer, topic, b"next")
    await produce(producer, topic, b"elsewhere", partition=1)
    seen = Seen()

    async with following(kafka_bootstrap, topic, seen, "beginning") as follower:
        await asyncio.wait_for(follower.ready.wait(), WAIT)

    assert sorted(v or b"" for v in seen.values()) == [b"bad", b"elsewhere", b"good", b"next"]
    bad = next(r for r in seen.records if r.value == b"bad")
    escaped = BAD_HEADER_KEY.decode("utf-8", errors="backslashreplace")
    assert bad.headers == [(escaped, b"v"), ("ok", b"1")]
    assert [r.value for r in seen.records if r.partition == 0] == [b"good", b"bad", b"next"]


class FailureLogged(logging.Handler):
    """Sets `event` when the follower logs that it failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("following topic"):
            self.event.set()


async def test_a_follower_started_before_its_topic_exists_starts_again_and_reads_it(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = f"tf-late-{unique}"
    seen = Seen()
    failed = FailureLogged()
    logger = logging.getLogger("ferryman_runtime.topic_follower")
    logger.addHandler(failed)
    try:
        async with following(
            kafka_bootstrap, topic, seen, "window", window=0.0, partitions_timeout=0.5
        ) as follower:
            await asyncio.wait_for(failed.event.wait(), WAIT)
            assert not follower.ready.is_set()
            assert not follower.live

            await new_topic(kafka_bootstrap, topic)
            await produce(producer, topic, b"after-creation")
            await asyncio.wait_for(follower.ready.wait(), WAIT)
            await seen.wait_for(b"after-creation")  # newer than the first run(): in the window
            assert follower.live
    finally:
        logger.removeHandler(failed)
    assert seen.values() == [b"after-creation"]


def catalog_record(server: str, *tools: str) -> CatalogRecord:
    entries = [ToolEntry(name=name, definition_hash="ab" * 32) for name in tools]
    return CatalogRecord(
        entry=ServerEntry(server=server, transport="stdio", tools=entries), tenants=["*"]
    )


async def test_the_catalog_view_reads_the_compacted_topic_then_follows_it(
    kafka_bootstrap: str, unique: str, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(kafka_bootstrap, f"tf-catalog-{unique}", partitions=1, compact=True)
    time_v1 = catalog_record("time", "now")
    await producer.send_and_wait(topic, time_v1.model_dump_json().encode(), key=b"time")
    await producer.send_and_wait(
        topic, catalog_record("gone").model_dump_json().encode(), key=b"gone"
    )
    await producer.send_and_wait(topic, None, key=b"gone")
    view = CatalogView(KafkaConnection(bootstrap_servers=kafka_bootstrap), topic, client_id=unique)
    task = asyncio.create_task(view.run())
    try:
        await asyncio.wait_for(view.ready.wait(), WAIT)
        assert (view.servers(), view.record("time")) == (["time"], time_v1)

        time_v2 = catalog_record("time", "now", "convert")
        await producer.send_and_wait(topic, time_v2.model_dump_json().encode(), key=b"time")
        await view.sync(WAIT)
        assert [t.name for t in view.tools_for(None, "time", ["*"])] == ["now", "convert"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
