"""The parallel consumer's pure parts: raw record parsing, key order, bounded attempts and
log throttling."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from prometheus_client import CollectorRegistry

from ferryman.contracts.errors import ErrorCode, FerrymanError
from ferryman_runtime.in_flight import InFlight
from ferryman_runtime.key_order import KeyOrder
from ferryman_runtime.log_throttle import LogThrottle, RepeatFilter
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.offsets import PartitionOffsets
from ferryman_runtime.record_attempts import Backoff, RecordAttempts
from ferryman_runtime.undecodable import UndecodableRecord, parse_record_set

Record = ConsumerRecord[bytes, bytes]
TP = TopicPartition("t", 0)


def _batch(
    base_offset: int,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    *,
    compression: int = 0,
    control: bool = False,
) -> bytes:
    builder = DefaultRecordBatchBuilder(2, compression, 0, -1, -1, -1, 1 << 20)
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, 1000 + delta, key, value, headers)
    batch = builder.build()
    struct.pack_into(">q", batch, 0, base_offset)
    if control:
        attributes = struct.unpack_from(">h", batch, 21)[0] | 0x20
        struct.pack_into(">h", batch, 21, attributes)
        struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[21:])))
    return bytes(batch)


def _with_bad_header_key(batch: bytes, placeholder: bytes, raw_key: bytes) -> bytes:
    patched = bytearray(batch)
    at = patched.find(placeholder)
    patched[at : at + len(raw_key)] = raw_key
    return bytes(patched)


def test_raw_parsing_keeps_keys_values_headers_and_offsets_of_every_batch() -> None:
    data = _batch(5, [(b"k", b"v0", [("a", b"1")]), (None, b"v1", [])]) + _batch(
        7, [(b"k2", None, [("b", b"2")])], compression=1
    )

    records = parse_record_set(data, start=0)

    assert [(r.offset, r.key, r.value, r.headers) for r in records] == [
        (5, b"k", b"v0", ((b"a", b"1"),)),
        (6, None, b"v1", ()),
        (7, b"k2", None, ((b"b", b"2"),)),
    ]
    assert [r.timestamp for r in records] == [1000, 1001, 1000]


def test_raw_parsing_skips_offsets_before_start_control_batches_and_a_truncated_tail() -> None:
    first = _batch(0, [(None, b"a", []), (None, b"b", [])])
    control = _batch(2, [(None, b"marker", [])], control=True)
    last = _batch(3, [(None, b"c", [])])

    records = parse_record_set(first + control + last + last[:20], start=1)

    assert [(r.offset, r.value) for r in records] == [(1, b"b"), (3, b"c")]


def test_raw_parsing_finds_the_header_key_aiokafka_cannot_decode() -> None:
    data = _with_bad_header_key(
        _batch(0, [(None, b"fine", [("ok", b"")]), (b"k", b"bad", [("xx", b"v")])]),
        b"xx",
        b"\xff\xfe",
    )

    fine, bad = parse_record_set(data, start=0)

    assert fine.header_error() is None
    assert isinstance(bad.header_error(), UnicodeDecodeError)
    assert bad.headers == ((b"\xff\xfe", b"v"),)
    undecodable = UndecodableRecord.from_raw(TP, bad, bad.header_error() or ValueError())
    assert undecodable.as_consumer_record().headers == (("\\xff\\xfe", b"v"),)


def test_raw_parsing_rejects_data_that_is_not_record_batches() -> None:
    legacy = bytearray(_batch(0, [(None, b"x", [])]))
    legacy[16] = 1  # magic v1

    with pytest.raises(ValueError, match="message format v1"):
        parse_record_set(bytes(legacy), start=0)


async def test_records_of_a_key_take_turns_and_other_keys_do_not_wait() -> None:
    order = KeyOrder()
    first, second, other = order.turn(TP, b"k"), order.turn(TP, b"k"), order.turn(TP, b"j")
    assert first is not None
    assert second is not None
    assert other is not None
    assert order.turn(TP, None) is None

    await asyncio.wait_for(first.wait(), 1)
    await asyncio.wait_for(other.wait(), 1)
    waiting = asyncio.create_task(second.wait())
    await asyncio.sleep(0)
    assert not waiting.done()

    first.release()
    await asyncio.wait_for(waiting, 1)
    second.release()
    other.release()
    assert order.keys_in_flight == 0


async def test_a_cancelled_waiter_does_not_break_the_queue_of_its_key() -> None:
    order = KeyOrder()
    first, second, third = (order.turn(TP, b"k") for _ in range(3))
    assert first is not None
    assert second is not None
    assert third is not None
    waiting = asyncio.create_task(second.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    second.release()  # a record always releases its turn, cancelled or not

    first.release()
    await asyncio.wait_for(third.wait(), 1)


class _Calls:
    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("boom")
        self.attempts: list[int] = []
        self.exhausted: list[tuple[int, BaseException]] = []
        self.exhausted_failures = 0
        self.delays: list[float] = []

    async def handler(self, record: Record, attempt: int) -> None:
        self.attempts.append(attempt)
        if len(self.attempts) <= self.failures:
            raise self.error

    async def on_exhausted(self, record: Record, attempts: int, error: BaseException) -> None:
        self.exhausted.append((attempts, error))
        if len(self.exhausted) <= self.exhausted_failures:
            raise ConnectionError("dlq down")

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)


def _record() -> Record:
    return ConsumerRecord("t", 0, 7, 0, 0, None, b"v", None, -1, 1, ())


def _attempts(
    calls: _Calls,
    *,
    max_attempts: int,
    exhausted: bool = True,
    connected: Callable[[], bool] = lambda: True,
    registry: CollectorRegistry | None = None,
) -> RecordAttempts:
    return RecordAttempts(
        handler=calls.handler,
        max_attempts=max_attempts,
        on_exhausted=calls.on_exhausted if exhausted else None,
        on_undecodable=None,
        backoff=Backoff(0.5, 2.0),
        metrics=ConsumerMetrics(registry or CollectorRegistry()),
        sleep=calls.sleep,
        connected=connected,
    )


async def test_a_record_is_handed_over_after_its_last_attempt_with_capped_backoff() -> None:
    calls = _Calls(failures=10)

    await _attempts(calls, max_attempts=4).settle(_record())

    assert calls.attempts == [1, 2, 3, 4]
    assert calls.delays == [0.5, 1.0, 2.0]
    assert [(n, str(e)) for n, e in calls.exhausted] == [(4, "boom")]


async def test_a_failing_hand_over_is_retried_until_it_succeeds() -> None:
    calls = _Calls(failures=10)
    calls.exhausted_failures = 2

    await _attempts(calls, max_attempts=1).settle(_record())

    assert calls.attempts == [1]
    assert [n for n, _ in calls.exhausted] == [1, 1, 1]
    assert calls.delays == [0.5, 1.0]


async def test_a_non_retryable_error_is_handed_over_at_once() -> None:
    calls = _Calls(failures=10, error=FerrymanError(ErrorCode.INVALID_REQUEST, "bad"))

    await _attempts(calls, max_attempts=5).settle(_record())

    assert calls.attempts == [1]
    assert [n for n, _ in calls.exhausted] == [1]


async def test_without_on_exhausted_the_handler_is_retried_until_it_succeeds() -> None:
    calls = _Calls(failures=7)

    await _attempts(calls, max_attempts=2, exhausted=False).settle(_record())

    assert calls.attempts == list(range(1, 9))
    assert calls.exhausted == []


def test_a_repeated_event_is_let_through_once_per_interval_with_its_count() -> None:
    now = [100.0]
    throttle = LogThrottle(30.0, clock=lambda: now[0])

    assert throttle.allow("x") == 0
    assert throttle.allow("x") is None
    assert throttle.allow("y") == 0
    now[0] += 10
    assert throttle.allow("x") is None
    now[0] += 25
    assert throttle.allow("x") == 2


def test_the_repeat_filter_marks_the_next_line_with_the_number_dropped() -> None:
    now = [0.0]
    repeat = RepeatFilter(10.0, clock=lambda: now[0])

    def line(node: int) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, "f", 1, "no node %s", (node,), None)

    assert repeat.filter(line(1))
    assert not repeat.filter(line(2))
    assert not repeat.filter(line(3))
    now[0] = 11.0
    shown = line(4)
    assert repeat.filter(shown)
    assert shown.getMessage() == "no node 4 [2 similar since the last report]"


async def test_kafka_errors_during_a_broker_outage_do_not_use_up_the_attempts() -> None:
    calls = _Calls(failures=6, error=KafkaConnectionError())
    outage = iter([False, False, False, False, True, True])

    await _attempts(calls, max_attempts=3, connected=lambda: next(outage)).settle(_record())

    assert calls.attempts == list(range(1, 8))  # 4 failures uncounted, 2 counted, then success
    assert calls.exhausted == []


async def test_settle_names_how_a_record_ended_and_counts_it_under_its_topic() -> None:
    registry = CollectorRegistry()
    calls = _Calls(failures=10, error=FerrymanError(ErrorCode.INVALID_REQUEST, "bad"))
    attempts = _attempts(calls, max_attempts=5, registry=registry)

    assert await attempts.settle(_record()) == "invalid_request"
    assert await _attempts(_Calls(failures=0), max_attempts=1).settle(_record()) is None
    labels = {"messaging_destination_name": "t"}
    assert registry.get_sample_value("ferryman_messages_exhausted_total", labels) == 1.0


async def test_in_flight_times_each_record_by_topic_and_error_type() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    bugs: list[BaseException] = []
    in_flight = InFlight(
        max_in_flight=4,
        key_ordered=False,
        group_id="g",
        metrics=metrics,
        on_advance=lambda: None,
        on_bug=bugs.append,
    )
    offsets = PartitionOffsets()
    tp = TopicPartition("t", 0)
    outcomes: list[str | None] = [None, "handler_exhausted"]

    async def settled() -> str | None:
        return outcomes.pop(0)

    async def buggy() -> str | None:
        raise KeyError("bug")

    for offset, work in enumerate([settled, settled, buggy]):
        in_flight.dispatch(tp, offsets, offset, None, work)
    await asyncio.wait_for(asyncio.gather(*in_flight.tasks()), 5)

    def count(error_type: str) -> float | None:
        labels = {"messaging_destination_name": "t", "error_type": error_type}
        return registry.get_sample_value("messaging_process_duration_seconds_count", labels)

    assert (count(""), count("handler_exhausted"), count("KeyError")) == (1.0, 1.0, 1.0)
    consumed = {"messaging_destination_name": "t", "messaging_consumer_group_name": "g"}
    assert registry.get_sample_value("messaging_client_consumed_messages_total", consumed) == 3.0
    assert registry.get_sample_value("ferryman_messages_in_flight_limit") == 4.0
    assert registry.get_sample_value("ferryman_messages_in_flight") == 0.0
    assert [type(bug) for bug in bugs] == [KeyError]
