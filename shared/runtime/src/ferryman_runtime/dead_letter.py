"""Parks poison records in a dead-letter topic, byte for byte, with the reason in headers.

A record the dead-letter topic refuses as too large is parked with its value cut
short (header `dlq-truncated` holds the original size) rather than retried forever.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts import events
from ferryman.publisher import Headers, KafkaPublisher, is_record_too_large
from ferryman_runtime.redaction import redact

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 1000


class DeadLetterReason(StrEnum):
    """Why a record was dead-lettered (`dlq-reason`)."""

    DECODE = "decode"
    VALIDATION = "validation"
    HANDLER = "handler"


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes],
    *,
    reason: DeadLetterReason,
    error: BaseException,
    attempts: int,
    failed_at: datetime | None = None,
) -> Headers:
    """Return the record's own headers, unchanged, followed by the `dlq-*` headers."""
    when = (failed_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    # Exception text may quote upstream bodies (and a credential echoed in them).
    message = redact(str(error))[:_MAX_MESSAGE] or type(error).__name__
    added: dict[str, str] = {
        events.DLQ_ORIGINAL_TOPIC: record.topic,
        events.DLQ_ORIGINAL_PARTITION: str(record.partition),
        events.DLQ_ORIGINAL_OFFSET: str(record.offset),
        events.DLQ_REASON: reason.value,
        events.DLQ_ERROR_TYPE: type(error).__qualname__,
        events.DLQ_ERROR_MESSAGE: message,
        events.DLQ_ATTEMPTS: str(attempts),
        events.DLQ_FAILED_AT: when,
    }
    original = [(key, value) for key, value in record.headers]
    # Error messages may quote undecodable input (lone surrogates); never fail to park it.
    encoded = (
        (key, value.encode("utf-8", errors="backslashreplace")) for key, value in added.items()
    )
    return [*original, *encoded]


async def publish_dead_letter(
    publisher: KafkaPublisher,
    record: ConsumerRecord[bytes, bytes],
    *,
    topic: str,
    reason: DeadLetterReason,
    error: BaseException,
    attempts: int,
) -> None:
    """Publish `record` to `topic` with its original key, value and headers, and wait for the ack.

    When `topic` refuses the record as too large, a copy is parked instead whose
    value is the longest tried prefix that fits, with a `dlq-truncated` header
    giving the original value's size.

    Raises:
        ferryman.publisher.RecordTooLarge: even the key and headers with an empty
            value are too large for `topic`.
        aiokafka.errors.KafkaError: the dead letter was not acknowledged; the
            caller must not commit the source offset.
    """
    headers = dead_letter_headers(record, reason=reason, error=error, attempts=attempts)
    try:
        await publisher.send_and_wait(topic, record.value, key=record.key, headers=headers)
    except KafkaError as exc:
        value = record.value
        if not value or not is_record_too_large(exc):
            raise
        logger.warning(
            "dead letter of %s:%d@%d (%d-byte value) is too large for %s; truncating it",
            record.topic,
            record.partition,
            record.offset,
            len(value),
            topic,
        )
        await _publish_truncated(publisher, topic, key=record.key, value=value, headers=headers)


async def _publish_truncated(
    publisher: KafkaPublisher, topic: str, *, key: bytes | None, value: bytes, headers: Headers
) -> None:
    marked = [*headers, (events.DLQ_TRUNCATED, str(len(value)).encode())]
    # The topic's limit is unknown here: halve first (a record just over the default
    # 1 MB limit keeps most of its value), then shrink fast; at most ~12 tries for 4 MB.
    keep = len(value) // 2
    while True:
        try:
            await publisher.send_and_wait(topic, value[:keep], key=key, headers=marked)
            return
        except KafkaError as exc:
            if keep == 0 or not is_record_too_large(exc):
                raise
        keep //= 4
