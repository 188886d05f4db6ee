"""The client shows each request's results once and in order, across redeliveries and restarts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from ferryman.client import ChatEvent, ChatFailedError, FerrymanClient, ReplySequencer
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequest,
    ChatRestarted,
    ChunkDelta,
    ErrorCode,
    ErrorInfo,
    Latency,
    Usage,
)

CUT = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="stream cut", retryable=True)
COMPLETED = ChatCompleted(
    content="ab",
    tool_calls=[],
    finish_reason="stop",
    usage=Usage(input_tokens=1, output_tokens=2),
    provider="mock",
    model="echo",
    chunk_count=2,
    latency_ms=Latency(total=1.0),
    stream_attempt=2,
)


def chunk(index: int, text: str = "", *, attempt: int = 1) -> ChatChunk:
    return ChatChunk(index=index, attempt=attempt, delta=ChunkDelta(content=text or None))


def restarted(attempt: int, discarded: int = 2) -> ChatRestarted:
    return ChatRestarted(attempt=attempt, discarded_chunks=discarded, reason=CUT, deployment="b")


def accepted(events: list[ChatEvent]) -> list[ChatEvent]:
    sequencer = ReplySequencer()
    return [event for event in events if sequencer.accept(event)]


def test_chunks_in_order_are_all_accepted() -> None:
    events: list[ChatEvent] = [chunk(0, "a"), chunk(1, "b"), chunk(2, "c"), COMPLETED]

    assert accepted(events) == events


def test_a_redelivered_chunk_is_dropped() -> None:
    events: list[ChatEvent] = [chunk(0, "a"), chunk(1, "b"), chunk(0, "a"), chunk(1, "b")]

    assert accepted(events) == [chunk(0, "a"), chunk(1, "b")]


def test_a_chunk_ahead_of_the_next_index_is_dropped() -> None:
    assert accepted([chunk(0, "a"), chunk(2, "c")]) == [chunk(0, "a")]


def test_a_restart_is_passed_on_and_the_new_attempt_counts_from_zero() -> None:
    events: list[ChatEvent] = [
        chunk(0, "x"),
        chunk(1, "y"),
        restarted(2),
        chunk(0, "a", attempt=2),
        chunk(1, "b", attempt=2),
        COMPLETED,
    ]

    assert accepted(events) == events


def test_late_chunks_of_the_failed_attempt_are_dropped_after_the_restart() -> None:
    events: list[ChatEvent] = [
        chunk(0, "x"),
        restarted(2, discarded=1),
        chunk(0, "x"),
        chunk(1, "y"),
        chunk(0, "a", attempt=2),
        chunk(1, "y"),
        chunk(1, "b", attempt=2),
    ]

    assert accepted(events) == [
        chunk(0, "x"),
        restarted(2, discarded=1),
        chunk(0, "a", attempt=2),
        chunk(1, "b", attempt=2),
    ]


def test_a_repeated_restart_is_dropped_and_does_not_rewind_the_attempt() -> None:
    events: list[ChatEvent] = [
        chunk(0, "x"),
        restarted(2),
        chunk(0, "a", attempt=2),
        restarted(2),
        chunk(0, "a", attempt=2),
        chunk(1, "b", attempt=2),
    ]

    assert accepted(events) == [
        chunk(0, "x"),
        restarted(2),
        chunk(0, "a", attempt=2),
        chunk(1, "b", attempt=2),
    ]


def test_a_chunk_of_an_attempt_not_yet_announced_is_dropped() -> None:
    assert accepted([chunk(0, "x"), chunk(1, "a", attempt=2)]) == [chunk(0, "x")]


def test_nothing_is_accepted_after_the_completed_event() -> None:
    sequencer = ReplySequencer()

    assert sequencer.accept(chunk(0, "a"))
    assert sequencer.accept(COMPLETED)
    assert sequencer.done
    assert not sequencer.accept(chunk(1, "b"))
    assert not sequencer.accept(restarted(2))
    assert not sequencer.accept(COMPLETED)


class ScriptedClient(FerrymanClient):
    """A client whose "Kafka" replays `script` into the reply queue when a request is published."""

    def __init__(self, script: list[tuple[str, ChatEvent | ChatFailed]]) -> None:
        super().__init__("unused:9092")
        self.script = script

    async def publish(
        self, request: ChatRequest | Mapping[str, Any], *, request_id: str | None = None, **_: Any
    ) -> str:
        assert request_id is not None
        queue = self._waiting[request_id]
        for event_type, event in self.script:
            queue.put_nowait((event_type, event.model_dump_json(exclude_none=True).encode()))
        return request_id


REQUEST = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


async def test_chat_stream_yields_the_restart_and_only_the_new_attempt_from_the_wire() -> None:
    client = ScriptedClient(
        [
            (LLM_CHAT_CHUNK, chunk(0, "x")),
            (LLM_CHAT_CHUNK, chunk(0, "x")),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1)),
            (LLM_CHAT_CHUNK, chunk(1, "y")),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1)),
            (LLM_CHAT_CHUNK, chunk(0, "a", attempt=2)),
            (LLM_CHAT_CHUNK, chunk(1, "b", attempt=2)),
            ("ferryman.llm.chat.unknown", chunk(9)),
            (LLM_CHAT_COMPLETED, COMPLETED),
            (LLM_CHAT_FAILED, ChatFailed(error=CUT)),
        ]
    )

    events = [event async for event in client.chat_stream(REQUEST, timeout=5)]

    assert events == [
        chunk(0, "x"),
        restarted(2, discarded=1),
        chunk(0, "a", attempt=2),
        chunk(1, "b", attempt=2),
        COMPLETED,
    ]
    assert await ScriptedClient(client.script).chat(REQUEST, timeout=5) == COMPLETED


async def test_chat_stream_raises_on_failed_after_a_restart() -> None:
    client = ScriptedClient(
        [
            (LLM_CHAT_CHUNK, chunk(0, "x")),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1)),
            (LLM_CHAT_FAILED, ChatFailed(error=CUT)),
        ]
    )
    seen: list[ChatEvent] = []

    async def read_all() -> None:
        async for event in client.chat_stream(REQUEST, timeout=5):
            seen.append(event)

    with pytest.raises(ChatFailedError, match="unavailable"):
        await read_all()

    assert seen == [chunk(0, "x"), restarted(2, discarded=1)]
