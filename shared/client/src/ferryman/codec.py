"""CloudEvents over Kafka, through the `cloudevents` SDK's Kafka binding.

Incoming records are decoded in the content mode their `content-type` names, as
the binding spec says (the SDK's own `from_kafka` guesses from `ce_` headers
instead, which breaks structured records that also carry `ce_` headers).
Outgoing events are always binary mode.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from ferryman.contracts.events import EXT_CORRELATION_ID, EXT_EXPIRY_TIME, EXT_REPLY_TO

_FORMAT = JSONFormat()
_STRUCTURED_PREFIX = "application/cloudevents"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

Headers = list[tuple[str, bytes]]


class DecodeError(Exception):
    """The record is not a valid CloudEvent (or not of the expected type)."""


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A decoded CloudEvent: its attributes (extensions included) and its data."""

    attributes: dict[str, Any]
    data: Any
    mode: str

    @property
    def id(self) -> str:
        """The event id (`ce_id`)."""
        return str(self.attributes["id"])

    @property
    def source(self) -> str:
        """The event source (`ce_source`)."""
        return str(self.attributes["source"])

    @property
    def type(self) -> str:
        """The event type (`ce_type`)."""
        return str(self.attributes["type"])

    def extension(self, name: str) -> str | None:
        """Return an extension attribute as a string, or None when absent."""
        value = self.attributes.get(name)
        return None if value is None else str(value)

    def expiry(self) -> datetime | None:
        """Return the `expirytime` extension as an aware datetime.

        Raises:
            DecodeError: the extension is not an RFC 3339 timestamp.
        """
        raw = self.attributes.get(EXT_EXPIRY_TIME)
        if raw is None:
            return None
        if isinstance(raw, datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
        text = str(raw)
        if not _RFC3339.fullmatch(text):
            raise DecodeError(f"expirytime {text[:100]!r} is not an RFC 3339 timestamp")
        try:
            return datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError as exc:
            raise DecodeError(f"expirytime {text[:100]!r} is not an RFC 3339 timestamp") from exc


def header_value(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """Return the last value of header `name` (case-insensitive) as text, or None."""
    found: str | None = None
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted and value is not None:
            found = value.decode("utf-8", errors="replace")
    return found


def reply_topic_hint(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """Best-effort reply topic of a record that may not decode: its `ce_replyto` header."""
    return header_value(headers, f"{ce_kafka.CE_PREFIX}{EXT_REPLY_TO}")


def decode_event(headers: Sequence[tuple[str, bytes | None]], value: bytes | None) -> IncomingEvent:
    """Decode a Kafka record as a CloudEvent, choosing the mode by `content-type`.

    The record key is deliberately not mapped to `partitionkey`: producers key
    by whatever they like, and a binary key must not make a record undecodable.

    Raises:
        DecodeError: the record is not a CloudEvents 1.0 event in either mode.
    """
    header_map: dict[str, bytes] = {}
    for key, raw in headers:
        if raw is not None:
            header_map[key.lower()] = raw
    content_type = header_map.get("content-type", b"").decode("utf-8", errors="replace")
    message = ce_kafka.KafkaMessage(headers=header_map, key=None, value=value or b"")
    structured = content_type.lower().startswith(_STRUCTURED_PREFIX)
    try:
        if structured:
            _require_structured_id(value or b"")
            event = ce_kafka.from_structured(message, _FORMAT)
        else:
            if "ce_specversion" not in header_map:
                raise DecodeError("no ce_specversion header and not a structured-mode record")
            if "ce_id" not in header_map:
                # The SDK would invent one; CloudEvents requires the producer's.
                raise DecodeError("no ce_id header: CloudEvents requires an id")
            event = ce_kafka.from_binary(message, _FORMAT)
    except DecodeError:
        raise
    except Exception as exc:  # the SDK raises a variety of types for malformed input
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    attributes = event.get_attributes()
    if attributes.get("specversion") != "1.0":
        raise DecodeError(f"unsupported specversion {attributes.get('specversion')!r}")
    for name, attribute in attributes.items():
        if isinstance(attribute, str) and not _encodable(attribute):
            # A lone surrogate (from a JSON escape) cannot be echoed in a Kafka header.
            raise DecodeError(f"attribute {name!r} is not valid Unicode text")
        if isinstance(attribute, str) and len(attribute) > MAX_ATTRIBUTE_LENGTH:
            raise DecodeError(
                f"attribute {name!r} is {len(attribute)} characters long "
                f"(at most {MAX_ATTRIBUTE_LENGTH}); it is echoed on every reply event"
            )
    return IncomingEvent(
        attributes=attributes,
        data=event.get_data(),
        mode="structured" if structured else "binary",
    )


MAX_ATTRIBUTE_LENGTH = 4096
"""Longest accepted attribute value: ids and extensions are echoed on every reply event."""


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_structured_id(value: bytes) -> None:
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise DecodeError(
            f"structured-mode value is not JSON ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(document, dict):
        raise DecodeError("structured-mode value is not a JSON object")
    event_id = cast(dict[str, Any], document).get("id")
    if not isinstance(event_id, str) or not event_id:
        raise DecodeError("no id: CloudEvents requires a non-empty string id")


def encode_event(
    *,
    event_type: str,
    source: str,
    data: bytes,
    correlation_id: str | None = None,
    extensions: dict[str, str] | None = None,
    event_id: str | None = None,
) -> Headers:
    """Encode a JSON CloudEvent in binary mode and return its Kafka headers.

    `data` is the already-serialized JSON payload; it is the record value as is.
    """
    attributes: dict[str, Any] = {
        "type": event_type,
        "source": source,
        "datacontenttype": "application/json",
    }
    if event_id is not None:
        attributes["id"] = event_id
    if correlation_id is not None:
        attributes[EXT_CORRELATION_ID] = correlation_id
    if extensions:
        attributes.update(extensions)
    message = ce_kafka.to_binary(CloudEvent(attributes, data), _FORMAT, key_mapper=_no_key)
    return list(message.headers.items())


class BinaryHeaders:
    """Binary-mode headers for a series of JSON events sharing type, source and extensions.

    The header layout comes from the SDK's `to_binary`, run once on a template
    event; each call then only swaps in a fresh `ce_id` and `ce_time`. A chunk
    stream publishes one event per token, and the full SDK path (event
    validation, attribute mapping) costs about three times as much per event.

    Args:
        event_type: `ce_type` of every event.
        source: `ce_source` of every event.
        correlation_id: `ce_correlationid`, when there is one.
        extensions: further extension attributes, echoed on every event.
        clock_ns: the wall clock in nanoseconds since the epoch (`time.time_ns`).
    """

    def __init__(
        self,
        *,
        event_type: str,
        source: str,
        correlation_id: str | None = None,
        extensions: dict[str, str] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        template = encode_event(
            event_type=event_type,
            source=source,
            data=b"",
            correlation_id=correlation_id,
            extensions=extensions,
            event_id="template",
        )
        self._fixed = [(k, v) for k, v in template if k not in _PER_EVENT]
        self._clock_ns = clock_ns

    def __call__(self, event_id: str | None = None) -> Headers:
        """Headers of one new event: `event_id` (a fresh UUID by default) and the time."""
        return [
            *self._fixed,
            ("ce_id", (event_id or str(uuid.uuid4())).encode()),
            ("ce_time", rfc3339_utc(self._clock_ns())),
        ]


_PER_EVENT = frozenset({"ce_id", "ce_time"})

_formatted_second: tuple[int, bytes] = (-1, b"")
"""The last whole second `rfc3339_utc` formatted: `(seconds since the epoch, date and time)`."""


def rfc3339_utc(clock_ns: int) -> bytes:
    """Format nanoseconds since the epoch as `datetime.isoformat` would, in UTC, ending in `Z`.

    Microseconds are truncated, and left out when zero, exactly like
    `datetime.now(UTC).isoformat()` (for example `2025-01-02T03:04:05.123456Z`). Only the
    microseconds are formatted per call: the date and time are cached per second, because a
    chunk stream stamps thousands of events within one.
    """
    global _formatted_second
    seconds, nanos = divmod(clock_ns, 1_000_000_000)
    cached_seconds, date_time = _formatted_second
    if seconds != cached_seconds:
        date_time = datetime.fromtimestamp(seconds, UTC).isoformat()[:19].encode()
        _formatted_second = (seconds, date_time)
    micros = nanos // 1000
    return b"%s.%06dZ" % (date_time, micros) if micros else date_time + b"Z"


def encode_structured(attributes: dict[str, Any], data: Any) -> tuple[Headers, bytes]:
    """Encode a CloudEvent in structured mode (used by tools and tests)."""
    message = ce_kafka.to_structured(CloudEvent(attributes, data), _FORMAT, key_mapper=_no_key)
    return list(message.headers.items()), message.value


def encode_binary(attributes: dict[str, Any], data: Any) -> tuple[Headers, bytes]:
    """Encode a CloudEvent in binary mode (used by the client and tools)."""
    message = ce_kafka.to_binary(CloudEvent(attributes, data), _FORMAT, key_mapper=_no_key)
    return list(message.headers.items()), message.value


def _no_key(_event: Any) -> None:
    return None
