"""The per-token fast paths produce exactly what the general paths produce."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from pydantic_core import PydanticSerializationError

from ferryman.codec import BinaryHeaders, decode_event, encode_event, rfc3339_utc
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    ChatCompleted,
    ChatFailed,
    ErrorCode,
    ErrorInfo,
)
from ferryman.contracts.llm import ChatChunk, ChunkDelta, ToolCallDelta
from ferryman.publisher import (
    KafkaPublisher,
    _CachedKeyPartitioner,  # pyright: ignore[reportPrivateUsage]
)
from ferryman_runtime.replies import ReplyStream


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

    assert without_id_time(fast) == without_id_time(slow)
    assert [k for k, _ in fast] == [k for k, _ in slow if k not in ("ce_id", "ce_time")] + [
        "ce_id",
        "ce_time",
    ]
    assert dict(fast)["ce_id"] != dict(again)["ce_id"]
    event = decode_event(fast, b"{}")
    assert (event.type, event.extension("correlationid")) == ("ferryman.llm.chat.chunk", "req-1")
    assert event.attributes["time"].tzinfo is not None


def without_id_time(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers if k not in ("ce_id", "ce_time")]


def test_cached_partitioner_places_keys_like_the_default_partitioner() -> None:
    cached, default = _CachedKeyPartitioner(max_keys=16), DefaultPartitioner()
    partitions = list(range(12))
    keys = [f"request-{i}".encode() for i in range(200)] * 2

    assert [cached(k, partitions, partitions) for k in keys] == [
        default(k, partitions, partitions) for k in keys
    ]


# --- ce_time: the per-second cache formats exactly what datetime.isoformat did -------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _isoformat_utc(clock_ns: int) -> bytes:
    """The general path `BinaryHeaders` used before: datetime's own formatting, µs floored."""
    return ((_EPOCH + timedelta(microseconds=clock_ns // 1000)).isoformat()[:-6] + "Z").encode()


def _interesting_instants() -> list[int]:
    rng = random.Random(8)
    second = 1_000_000_000
    edges = [0, 951_782_400, 1_709_164_800, 1_735_689_599, 4_107_542_399]  # leap days, year ends
    instants = [s * second + offset for s in edges for offset in (0, 999, 1000, 999_999_999)]
    instants += [rng.randrange(0, 4_102_444_800 * second) for _ in range(5000)]
    base = 1_760_000_000 * second  # runs within one second, then back to an earlier one
    instants += [base + rng.randrange(second) for _ in range(200)] + [base - 1, base, base - 1]
    return instants


def test_rfc3339_utc_matches_datetime_isoformat_for_any_instant() -> None:
    for instant in _interesting_instants():
        assert rfc3339_utc(instant) == _isoformat_utc(instant), instant


def test_binary_headers_stamp_the_time_of_the_injected_clock() -> None:
    instant = 1_767_225_600_000_123_456  # 2026-01-01T00:00:00.000123456Z
    make = BinaryHeaders(event_type="t", source="/s", clock_ns=lambda: instant)

    headers = make("run.0")

    assert dict(headers)["ce_time"] == b"2026-01-01T00:00:00.000123Z"
    event = decode_event(headers, b"{}")
    assert event.attributes["time"] == datetime(2026, 1, 1, 0, 0, 0, 123, tzinfo=UTC)
    assert event.id == "run.0"


# --- ReplyStream: the records it publishes are those of the general encoding ---------------

_ALPHABET = (
    [chr(c) for c in range(0x80)]  # every ASCII character, controls, quote and backslash included
    + [chr(c) for c in range(0x80, 0x100)]
    + ["\u2028", "\u2029", "\ufeff", "\ufffd", "\u00e9", "\u4e2d", "\U0001f600", "\U0010ffff"]
    + ['"', "\\", "/", "\\u0000", "</script>"]
)


def _text(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return ""
    if rng.random() < 0.2:  # anywhere in Unicode but the surrogates, which no JSON text can hold
        return "".join(
            chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)]))
            for _ in range(rng.randrange(1, 12))
        )
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 24)))


def _maybe(rng: random.Random, value: str) -> str | None:
    return value if rng.random() < 0.5 else None


def _random_chunk(rng: random.Random, index: int) -> ChatChunk:
    tool_calls = None
    if rng.random() < 0.4:
        tool_calls = [
            ToolCallDelta(
                index=rng.randrange(4),
                id=_maybe(rng, _text(rng)),
                name=_maybe(rng, _text(rng)),
                arguments=_maybe(rng, _text(rng)),
            )
            for _ in range(rng.randrange(1, 3))
        ]
    content = _text(rng) if tool_calls is None or rng.random() < 0.3 else None
    return ChatChunk(
        index=index,
        delta=ChunkDelta(content=content, tool_calls=tool_calls),
        attempt=rng.choice([1, 1, 2, 17]),
    )


class _AckedByHand:
    """Records what ReplyStream sends; the test settles each acknowledgement itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.acks: list[asyncio.Future[None]] = []
        self._sent_one = asyncio.Event()

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, list(headers)))
        self.acks.append(asyncio.get_running_loop().create_future())
        self._sent_one.set()
        return self.acks[-1]

    async def wait_sent(self, count: int) -> None:
        """Return once `count` records were sent (bounded by the caller's timeout)."""
        while len(self.sent) < count:
            self._sent_one.clear()
            await self._sent_one.wait()

    def ack_all(self) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_result(None)


def _stream(publisher: _AckedByHand) -> ReplyStream:
    return ReplyStream(
        cast(KafkaPublisher, publisher),
        topic="t.replies",
        request_id="req-7",
        source="/ferryman/llm-worker/a",
        extensions={"tenant": "t1", "traceparent": "00-abc-def-01"},
        failed_type=LLM_CHAT_FAILED,
        failed_model=ChatFailed,
        run_id="1767225600000-0123456789ab",
    )


def _general_headers(stream: ReplyStream, event_type: str) -> list[tuple[str, bytes]]:
    return encode_event(
        event_type=event_type,
        source="/ferryman/llm-worker/a",
        data=b"",
        correlation_id="req-7",
        extensions={"tenant": "t1", "traceparent": "00-abc-def-01", "runid": stream.run_id},
        event_id="x",
    )


async def test_reply_stream_records_are_those_of_the_general_encoding() -> None:
    rng, publisher = random.Random(7), _AckedByHand()
    stream = _stream(publisher)
    chunks = [_random_chunk(rng, i) for i in range(3000)]
    completed = ChatCompleted.model_validate(
        {
            "content": "".join(c.delta.content or "" for c in chunks[:50]),
            "tool_calls": [{"id": "c\u00e9\n", "name": "f", "arguments": '{"a":"\\u0001"}'}],
            "finish_reason": "stop",
            "usage": {"input_tokens": 3, "output_tokens": 5},
            "provider": "openai",
            "model": "m",
            "chunk_count": len(chunks),
            "latency_ms": {"total": 12.5},
        }
    )

    for chunk in chunks:
        await stream.emit(LLM_CHAT_CHUNK, chunk)
    publisher.ack_all()
    finishing = asyncio.ensure_future(stream.finish(LLM_CHAT_COMPLETED, completed))
    await asyncio.wait_for(publisher.wait_sent(len(chunks) + 1), 5)
    publisher.ack_all()
    await asyncio.wait_for(finishing, 5)

    payloads = [*chunks, completed]
    assert [value for _, _, value, _ in publisher.sent] == [
        p.model_dump_json(exclude_none=True).encode() for p in payloads
    ]
    chunk_layout = without_id_time(_general_headers(stream, LLM_CHAT_CHUNK))
    for sequence, (topic, key, _, headers) in enumerate(publisher.sent):
        assert (topic, key) == ("t.replies", b"req-7")
        expected = (
            chunk_layout
            if sequence < len(chunks)
            else without_id_time(_general_headers(stream, LLM_CHAT_COMPLETED))
        )
        assert headers[:-2] == expected
        assert headers[-2] == ("ce_id", f"{stream.run_id}.{sequence}".encode())
        assert headers[-1][0] == "ce_time"
    assert stream.finished


async def test_reply_stream_refuses_a_payload_json_cannot_carry_and_publishes_nothing() -> None:
    publisher = _AckedByHand()
    stream = _stream(publisher)
    lone_surrogate = ChatChunk(index=0, delta=ChunkDelta(content="a\ud800b"))

    with pytest.raises(PydanticSerializationError, match="surrogates not allowed"):
        await stream.emit(LLM_CHAT_CHUNK, lone_surrogate)

    assert publisher.sent == []


async def test_finish_waits_for_every_unacknowledged_event() -> None:
    publisher = _AckedByHand()
    stream = _stream(publisher)
    for index in range(4):
        await stream.emit(LLM_CHAT_CHUNK, ChatChunk(index=index, delta=ChunkDelta(content="x")))
    for ack in publisher.acks[:3]:
        ack.set_result(None)

    finishing = asyncio.ensure_future(stream.fail(_error()))
    await asyncio.wait_for(publisher.wait_sent(5), 5)
    publisher.acks[4].set_result(None)  # the terminal event, but chunk 3 is still pending
    done, _ = await asyncio.wait({finishing}, timeout=0.2)

    assert not done
    assert not stream.finished
    publisher.acks[3].set_result(None)
    await asyncio.wait_for(finishing, 5)
    assert stream.finished


async def test_finish_raises_the_first_failed_acknowledgement_even_when_settled_early() -> None:
    publisher = _AckedByHand()
    stream = _stream(publisher)
    for index in range(5):
        await stream.emit(LLM_CHAT_CHUNK, ChatChunk(index=index, delta=ChunkDelta(content="x")))
    first, second = KafkaTimeoutError("chunk 1"), KafkaTimeoutError("chunk 3")
    for index, ack in enumerate(publisher.acks):
        if index in (1, 3):
            ack.set_exception(first if index == 1 else second)
        else:
            ack.set_result(None)

    finishing = asyncio.ensure_future(stream.fail(_error()))
    await asyncio.wait_for(publisher.wait_sent(6), 5)
    publisher.acks[5].set_result(None)

    with pytest.raises(KafkaTimeoutError, match="chunk 1"):
        await asyncio.wait_for(finishing, 5)
    assert not stream.finished


def _error() -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.INTERNAL, message="boom", retryable=False)
