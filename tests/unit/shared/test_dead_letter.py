"""Dead-letter headers: the original headers byte for byte, then the `dlq-*` reason headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka import ConsumerRecord

from ferryman.codec import DecodeError, decode_event
from ferryman.contracts import events
from ferryman_runtime.dead_letter import DeadLetterReason, dead_letter_headers

FAILED_AT = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _record(
    headers: list[tuple[str, bytes]], value: bytes = b"\x00poison"
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="llm.requests",
        partition=3,
        offset=42,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


def test_original_headers_are_kept_byte_for_byte_in_order_before_the_dlq_headers() -> None:
    original = [
        ("x-raw", b"\xff\x00\xfe"),
        ("ce_id", b"first"),
        ("X-Mixed-Case", b""),
        ("ce_id", b"second"),
    ]
    record = _record(original)

    headers = dead_letter_headers(
        record,
        reason=DeadLetterReason.DECODE,
        error=DecodeError("no ce_specversion header"),
        attempts=2,
        failed_at=FAILED_AT,
    )

    assert headers[: len(original)] == original
    assert headers[len(original) :] == [
        (events.DLQ_ORIGINAL_TOPIC, b"llm.requests"),
        (events.DLQ_ORIGINAL_PARTITION, b"3"),
        (events.DLQ_ORIGINAL_OFFSET, b"42"),
        (events.DLQ_REASON, b"decode"),
        (events.DLQ_ERROR_TYPE, b"DecodeError"),
        (events.DLQ_ERROR_MESSAGE, b"no ce_specversion header"),
        (events.DLQ_ATTEMPTS, b"2"),
        (events.DLQ_FAILED_AT, b"2030-01-02T03:04:05.678000Z"),
    ]


def test_the_dlq_header_names_are_exactly_the_contract_list() -> None:
    headers = dead_letter_headers(
        _record([]),
        reason=DeadLetterReason.VALIDATION,
        error=ValueError("bad"),
        attempts=1,
        failed_at=FAILED_AT,
    )

    only_on_truncated_copies = {events.DLQ_TRUNCATED}
    expected = tuple(name for name in events.DLQ_HEADERS if name not in only_on_truncated_copies)
    assert tuple(name for name, _ in headers) == expected


def test_the_failure_time_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)

    headers = dict(
        dead_letter_headers(
            _record([]), reason=DeadLetterReason.HANDLER, error=ValueError("x"), attempts=1
        )
    )

    stamp = headers[events.DLQ_FAILED_AT].decode()
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp)
    assert before <= parsed <= datetime.now(UTC)


def test_an_error_without_a_message_is_described_by_its_type() -> None:
    headers = dict(
        dead_letter_headers(
            _record([]),
            reason=DeadLetterReason.HANDLER,
            error=TimeoutError(),
            attempts=5,
            failed_at=FAILED_AT,
        )
    )

    assert headers[events.DLQ_ERROR_MESSAGE] == b"TimeoutError"
    assert headers[events.DLQ_ERROR_TYPE] == b"TimeoutError"
    assert headers[events.DLQ_REASON] == b"handler"


def test_a_long_error_message_is_truncated_to_1000_characters() -> None:
    headers = dict(
        dead_letter_headers(
            _record([]),
            reason=DeadLetterReason.VALIDATION,
            error=ValueError("é" * 5000),
            attempts=1,
            failed_at=FAILED_AT,
        )
    )

    assert headers[events.DLQ_ERROR_MESSAGE].decode("utf-8") == "é" * 1000


def test_a_decode_error_quoting_a_lone_surrogate_can_still_be_dead_lettered() -> None:
    original = [("content-type", b"application/cloudevents+json")]
    value = b'{"specversion": "1.0", "id": "1", "type": "t", "source": "/s", "\\udcff": "x"}'
    record = _record(original, value)
    with pytest.raises(DecodeError) as decode_failure:
        decode_event(record.headers, record.value)

    headers = dead_letter_headers(
        record,
        reason=DeadLetterReason.DECODE,
        error=decode_failure.value,
        attempts=1,
        failed_at=FAILED_AT,
    )

    assert headers[0] == original[0]
    assert dict(headers)[events.DLQ_ERROR_MESSAGE].startswith(b"CloudEventValidationError")
