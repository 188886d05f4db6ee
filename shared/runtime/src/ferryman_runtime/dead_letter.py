"""Parks poison records in a dead-letter topic, byte for byte, with the reason in headers."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts import events
from ferryman.publisher import Headers, KafkaPublisher

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
    message = str(error)[:_MAX_MESSAGE] or type(error).__name__
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

    Raises:
        aiokafka.errors.KafkaError: the dead letter was not acknowledged; the
            caller must not commit the source offset.
    """
    headers = dead_letter_headers(record, reason=reason, error=error, attempts=attempts)
    await publisher.send_and_wait(topic, record.value, key=record.key, headers=headers)
