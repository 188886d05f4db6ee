"""CloudEvents over Kafka: decoding in the mode `content-type` names, and encoding replies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ferryman.codec import (
    DecodeError,
    decode_event,
    encode_binary,
    encode_event,
    encode_structured,
    header_value,
    reply_topic_hint,
)

ATTRIBUTES: dict[str, Any] = {
    "id": "req-1",
    "type": "ferryman.llm.chat.requested",
    "source": "/tests/codec",
    "datacontenttype": "application/json",
    "replyto": "my.replies",
    "tenant": "acme",
}
DATA = {"model": "mock/echo", "messages": [{"role": "user", "content": "héllo"}]}

BINARY_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"req-1"),
    ("ce_type", b"t"),
    ("ce_source", b"/s"),
    ("content-type", b"application/json"),
]


def _binary_headers_with(**overrides: bytes) -> list[tuple[str, bytes]]:
    headers = [(k, overrides.pop(k, v)) for k, v in BINARY_HEADERS]
    return headers + list(overrides.items())


def test_a_binary_mode_event_round_trips() -> None:
    headers, value = encode_binary(ATTRIBUTES, DATA)

    event = decode_event(headers, value)

    assert event.mode == "binary"
    assert (event.id, event.type, event.source) == (
        "req-1",
        "ferryman.llm.chat.requested",
        "/tests/codec",
    )
    assert event.extension("replyto") == "my.replies"
    assert event.extension("tenant") == "acme"
    assert event.extension("absent") is None
    assert event.data == DATA


def test_a_structured_mode_event_round_trips() -> None:
    headers, value = encode_structured(ATTRIBUTES, DATA)

    event = decode_event(headers, value)

    assert dict(headers)["content-type"].startswith(b"application/cloudevents")
    assert event.mode == "structured"
    assert (event.id, event.source) == ("req-1", "/tests/codec")
    assert event.extension("replyto") == "my.replies"
    assert event.data == DATA


def test_a_structured_record_that_also_carries_ce_headers_is_decoded_as_structured() -> None:
    headers, value = encode_structured(ATTRIBUTES, DATA)
    decoy = [("ce_specversion", b"1.0"), ("ce_id", b"decoy"), ("ce_type", b"decoy")]

    event = decode_event([*headers, *decoy], value)

    assert event.mode == "structured"
    assert event.id == "req-1"
    assert event.type == "ferryman.llm.chat.requested"
    assert event.data == DATA


def test_a_record_without_headers_is_not_an_event() -> None:
    with pytest.raises(DecodeError, match="ce_specversion"):
        decode_event([], b'{"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}')


def test_a_structured_record_with_invalid_json_is_not_an_event() -> None:
    headers, _ = encode_structured(ATTRIBUTES, DATA)

    with pytest.raises(DecodeError, match="JSONDecodeError"):
        decode_event(headers, b"{not json")


def test_a_binary_record_without_ce_source_is_not_an_event() -> None:
    headers = [(k, v) for k, v in BINARY_HEADERS if k != "ce_source"]

    with pytest.raises(DecodeError, match="source"):
        decode_event(headers, b"{}")


def test_a_binary_record_with_a_non_utf8_header_value_is_not_an_event() -> None:
    with pytest.raises(DecodeError, match="UnicodeDecodeError"):
        decode_event(_binary_headers_with(ce_id=b"\xff\xfe"), b"{}")


def test_a_binary_specversion_0_3_event_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"unsupported specversion '0\.3'"):
        decode_event(_binary_headers_with(ce_specversion=b"0.3"), b"{}")


def test_a_structured_specversion_0_3_event_is_rejected() -> None:
    headers, _ = encode_structured(ATTRIBUTES, DATA)
    value = b'{"specversion": "0.3", "id": "1", "type": "t", "source": "/s"}'

    with pytest.raises(DecodeError, match=r"unsupported specversion '0\.3'"):
        decode_event(headers, value)


def test_header_names_are_matched_case_insensitively() -> None:
    headers = [(k.upper(), v) for k, v in BINARY_HEADERS]

    event = decode_event(headers, b'{"a": 1}')

    assert event.id == "req-1"
    assert event.data == {"a": 1}


def _with_expiry(raw: str) -> Any:
    headers, value = encode_binary({**ATTRIBUTES, "expirytime": raw}, DATA)
    return decode_event(headers, value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (
            "2030-01-02T03:04:05.5+02:00",
            datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_expiry_parses_rfc3339_timestamps_as_aware_datetimes(raw: str, expected: datetime) -> None:
    parsed = _with_expiry(raw).expiry()

    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


def test_expiry_is_none_without_the_extension() -> None:
    headers, value = encode_binary(ATTRIBUTES, DATA)

    assert decode_event(headers, value).expiry() is None


def test_expiry_rejects_garbage() -> None:
    with pytest.raises(DecodeError, match="not an RFC 3339 timestamp"):
        _with_expiry("tomorrow").expiry()


@pytest.mark.parametrize(
    "text", ["2030-01-02T03:04:05", "20300102T030405Z", "2030-01-02 03:04:05Z", "2030-W01-2T00:00Z"]
)
def test_expiry_rejects_timestamps_that_are_not_rfc_3339(text: str) -> None:
    with pytest.raises(DecodeError):
        _with_expiry(text).expiry()


def test_reply_topic_hint_reads_ce_replyto_from_an_undecodable_record() -> None:
    headers = [("x-junk", b"\xff\x00"), ("CE_REPLYTO", b"their.replies")]
    with pytest.raises(DecodeError):
        decode_event(headers, b"\x00garbage")

    assert reply_topic_hint(headers) == "their.replies"


def test_reply_topic_hint_is_none_without_ce_replyto() -> None:
    assert reply_topic_hint([("ce_id", b"1")]) is None


def test_header_value_returns_the_last_value_and_skips_null_values() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("ce_id", b"first"),
        ("CE_ID", b"last"),
        ("ce_id", None),
    ]

    assert header_value(headers, "ce_id") == "last"


def test_encode_event_sets_binary_mode_headers_with_the_correlation_id() -> None:
    data = b'{"index":0,"delta":{"content":"hi"}}'

    headers = encode_event(
        event_type="ferryman.llm.chat.chunk",
        source="/ferryman/llm-worker",
        data=data,
        correlation_id="req-1",
        extensions={"tenant": "acme"},
        event_id="evt-9",
    )

    as_dict = dict(headers)
    assert len(as_dict) == len(headers), "no header name may repeat"
    assert as_dict["ce_specversion"] == b"1.0"
    assert as_dict["content-type"] == b"application/json"
    assert as_dict["ce_correlationid"] == b"req-1"
    assert as_dict["ce_type"] == b"ferryman.llm.chat.chunk"
    assert as_dict["ce_source"] == b"/ferryman/llm-worker"
    assert as_dict["ce_id"] == b"evt-9"
    assert as_dict["ce_tenant"] == b"acme"
    assert all(isinstance(v, bytes) for _, v in headers)
    event = decode_event(headers, data)
    assert event.data == {"index": 0, "delta": {"content": "hi"}}
    assert event.extension("correlationid") == "req-1"


def test_encode_event_generates_a_fresh_id_per_event() -> None:
    first = dict(encode_event(event_type="t", source="/s", data=b"{}"))
    second = dict(encode_event(event_type="t", source="/s", data=b"{}"))

    assert first["ce_id"]
    assert first["ce_id"] != second["ce_id"]
    assert "ce_correlationid" not in first
