"""The per-token fast paths produce exactly what the general paths produce."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from ferryman.codec import BinaryHeaders, decode_event, encode_event
from ferryman.publisher import _CachedKeyPartitioner  # pyright: ignore[reportPrivateUsage]


def test_binary_headers_match_the_sdk_encoding_except_id_and_time() -> None:
    options = {
        "event_type": "ferryman.llm.chat.chunk",
        "source": "/ferryman/llm-worker/a",
        "correlation_id": "req-1",
        "extensions": {"tenant": "t1", "traceparent": "00-abc-def-01"},
    }
    make = BinaryHeaders(**options)

    fast, slow = make(), encode_event(data=b"{}", **options)
    again = make()

    def without_id_time(headers):
        return [(k, v) for k, v in headers if k not in ("ce_id", "ce_time")]

    assert without_id_time(fast) == without_id_time(slow)
    assert [k for k, _ in fast] == [k for k, _ in slow if k not in ("ce_id", "ce_time")] + [
        "ce_id",
        "ce_time",
    ]
    assert dict(fast)["ce_id"] != dict(again)["ce_id"]
    event = decode_event(fast, b"{}")
    assert (event.type, event.extension("correlationid")) == ("ferryman.llm.chat.chunk", "req-1")
    assert event.attributes["time"].tzinfo is not None


def test_cached_partitioner_places_keys_like_the_default_partitioner() -> None:
    cached, default = _CachedKeyPartitioner(max_keys=16), DefaultPartitioner()
    partitions = list(range(12))
    keys = [f"request-{i}".encode() for i in range(200)] * 2

    assert [cached(k, partitions, partitions) for k in keys] == [
        default(k, partitions, partitions) for k in keys
    ]
