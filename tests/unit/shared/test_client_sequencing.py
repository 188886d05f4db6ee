"""The client shows each request's results once and in order, across redeliveries, reruns and
restarts, and only replies that carry the request's reply token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from ferryman.client import ChatEvent, ChatFailedError, FerrymanClient, ReplySequencer
from ferryman.codec import encode_event
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRestarted,
    ChunkDelta,
    ErrorCode,
    ErrorInfo,
    Latency,
    Usage,
)
from ferryman.contracts.events import EXT_REPLY_TOKEN, EXT_RUN_ID
from ferryman.replies import ReplyRole, RunRestarted, reply_token_matches

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
    return [shown for event in events for shown in sequencer.accept(event)]  # type: ignore[misc]


def accepted_runs(events: list[tuple[str | None, ChatEvent]]) -> list[object]:
    """Feed (run id, event) pairs; return what reached the reader."""
    sequencer = ReplySequencer()
    return [shown for run, event in events for shown in sequencer.accept(event, run_id=run)]


def rerun(run_id: str, previous: str | None, discarded: int) -> RunRestarted:
    return RunRestarted(run_id=run_id, previous_run_id=previous, discarded_chunks=discarded)


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

    assert sequencer.accept(chunk(0, "a")) == [chunk(0, "a")]
    assert sequencer.accept(COMPLETED) == [COMPLETED]
    assert sequencer.done
    assert sequencer.accept(chunk(1, "b")) == []
    assert sequencer.accept(restarted(2)) == []
    assert sequencer.accept(COMPLETED) == []
    assert sequencer.accept(chunk(0, "z"), run_id="9") == []


# Run ids as the worker makes them: milliseconds, then random bits; later runs sort greater.
RUN_A = "1700000000000-aaaaaaaaaaaa"
RUN_B = "1700000005000-bbbbbbbbbbbb"


def test_a_newer_run_discards_the_older_and_late_chunks_of_the_older_are_ignored() -> None:
    events: list[tuple[str | None, ChatEvent]] = [
        (RUN_A, chunk(0, "x")),
        (RUN_A, chunk(1, "y")),
        (RUN_B, chunk(0, "a")),
        (RUN_A, chunk(2, "z")),
        (RUN_B, chunk(1, "b")),
        (RUN_A, COMPLETED),
        (RUN_B, COMPLETED),
    ]

    assert accepted_runs(events) == [
        chunk(0, "x"),
        chunk(1, "y"),
        rerun(RUN_B, RUN_A, discarded=2),
        chunk(0, "a"),
        chunk(1, "b"),
        COMPLETED,
    ]


def test_a_late_run_seen_after_a_newer_one_is_ignored_entirely() -> None:
    events: list[tuple[str | None, ChatEvent]] = [
        (RUN_B, chunk(0, "a")),
        (RUN_A, chunk(0, "x")),
        (RUN_A, chunk(1, "y")),
        (RUN_A, COMPLETED),
        (RUN_B, chunk(1, "b")),
        (RUN_B, COMPLETED),
    ]

    assert accepted_runs(events) == [chunk(0, "a"), chunk(1, "b"), COMPLETED]


def test_duplicates_within_a_run_are_dropped_and_do_not_restart_it() -> None:
    events: list[tuple[str | None, ChatEvent]] = [
        (RUN_A, chunk(0, "x")),
        (RUN_A, chunk(0, "x")),
        (RUN_B, chunk(0, "a")),
        (RUN_B, chunk(0, "a")),
        (RUN_B, chunk(1, "b")),
        (RUN_B, chunk(1, "b")),
        (RUN_B, COMPLETED),
        (RUN_B, COMPLETED),
    ]

    assert accepted_runs(events) == [
        chunk(0, "x"),
        rerun(RUN_B, RUN_A, discarded=1),
        chunk(0, "a"),
        chunk(1, "b"),
        COMPLETED,
    ]


def test_a_new_run_resets_the_attempt_and_counts_only_the_current_attempts_chunks() -> None:
    events: list[tuple[str | None, ChatEvent]] = [
        (RUN_A, chunk(0, "x")),
        (RUN_A, restarted(2, discarded=1)),
        (RUN_A, chunk(0, "p", attempt=2)),
        (RUN_B, chunk(0, "a")),
        (RUN_A, chunk(1, "q", attempt=2)),
        (RUN_B, chunk(1, "b")),
    ]

    assert accepted_runs(events) == [
        chunk(0, "x"),
        restarted(2, discarded=1),
        chunk(0, "p", attempt=2),
        rerun(RUN_B, RUN_A, discarded=1),
        chunk(0, "a"),
        chunk(1, "b"),
    ]


def test_replies_without_a_run_id_are_one_run_older_than_any_with_one() -> None:
    events: list[tuple[str | None, ChatEvent]] = [
        (None, chunk(0, "x")),
        (None, chunk(1, "y")),
        (RUN_A, chunk(0, "a")),
        (None, chunk(2, "z")),
        (RUN_A, COMPLETED),
    ]

    assert accepted_runs(events) == [
        chunk(0, "x"),
        chunk(1, "y"),
        rerun(RUN_A, None, discarded=2),
        chunk(0, "a"),
        COMPLETED,
    ]


def test_a_failure_of_an_older_run_is_ignored() -> None:
    sequencer = ReplySequencer()
    failed = ChatFailed(error=CUT)

    assert sequencer.accept(chunk(0, "a"), run_id=RUN_B) == [chunk(0, "a")]
    assert sequencer.accept(failed, run_id=RUN_A) == []
    assert not sequencer.done
    assert sequencer.accept(failed, run_id=RUN_B) == [failed]
    assert sequencer.done


def test_progress_replies_pass_once_per_event_id() -> None:
    sequencer = ReplySequencer()
    note = ChatFailed(error=CUT)  # any model: the role decides

    assert sequencer.accept(note, ReplyRole.PROGRESS, event_id="r.0") == [note]
    assert sequencer.accept(note, ReplyRole.PROGRESS, event_id="r.0") == []
    assert sequencer.accept(note, ReplyRole.PROGRESS, event_id="r.1") == [note]


def test_the_reply_token_must_match_when_the_request_carried_one() -> None:
    assert reply_token_matches("s3cret", "s3cret")
    assert not reply_token_matches("s3cret", "s3cre")
    assert not reply_token_matches("s3cret", None)
    assert not reply_token_matches("s3cret", "")
    assert reply_token_matches(None, None)
    assert reply_token_matches(None, "anything")


Token = Literal["right", "wrong", "none"]


class ScriptedClient(FerrymanClient):
    """A client whose "Kafka" routes scripted reply records, built as a worker builds them,
    into its reply reader when a request is published."""

    def __init__(self, script: list[tuple[str, BaseModel, str | None, Token]]) -> None:
        super().__init__("unused:9092")
        self.script = script
        self.sent_tokens: list[str | None] = []

    async def _send(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        request_id: str,
        reply_token: str | None,
        **_: Any,
    ) -> None:
        self.sent_tokens.append(reply_token)
        for reply_type, payload, run_id, token in self.script:
            extensions = {} if run_id is None else {EXT_RUN_ID: run_id}
            if token != "none":
                assert reply_token is not None
                extensions[EXT_REPLY_TOKEN] = reply_token if token == "right" else "forged"
            headers = encode_event(
                event_type=reply_type,
                source="/worker",
                data=b"",
                correlation_id=request_id,
                extensions=extensions,
            )
            self._replies.route(headers, payload.model_dump_json(exclude_none=True).encode())


REQUEST = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}


async def test_chat_stream_yields_the_restart_and_only_the_new_attempt_from_the_wire() -> None:
    client = ScriptedClient(
        [
            (LLM_CHAT_CHUNK, chunk(0, "x"), RUN_A, "right"),
            (LLM_CHAT_CHUNK, chunk(0, "x"), RUN_A, "right"),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1), RUN_A, "right"),
            (LLM_CHAT_CHUNK, chunk(1, "y"), RUN_A, "right"),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1), RUN_A, "right"),
            (LLM_CHAT_CHUNK, chunk(0, "a", attempt=2), RUN_A, "right"),
            (LLM_CHAT_CHUNK, chunk(1, "b", attempt=2), RUN_A, "right"),
            ("ferryman.llm.chat.unknown", chunk(9), RUN_A, "right"),
            (LLM_CHAT_COMPLETED, COMPLETED, RUN_A, "right"),
            (LLM_CHAT_FAILED, ChatFailed(error=CUT), RUN_A, "right"),
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


async def test_chat_stream_follows_a_rerun_and_drops_forged_and_undecodable_replies() -> None:
    forged = COMPLETED.model_copy(update={"content": "forged"})
    client = ScriptedClient(
        [
            (LLM_CHAT_CHUNK, chunk(0, "x"), RUN_A, "right"),
            (LLM_CHAT_COMPLETED, forged, RUN_A, "wrong"),
            (LLM_CHAT_COMPLETED, forged, RUN_B, "none"),
            (LLM_CHAT_CHUNK, ChatFailed(error=CUT), RUN_A, "right"),  # not a chunk
            (LLM_CHAT_CHUNK, chunk(0, "a"), RUN_B, "right"),
            (LLM_CHAT_CHUNK, chunk(1, "y"), RUN_A, "right"),
            (LLM_CHAT_COMPLETED, COMPLETED, RUN_B, "right"),
        ]
    )

    events = [event async for event in client.chat_stream(REQUEST, timeout=5)]

    assert events == [chunk(0, "x"), rerun(RUN_B, RUN_A, discarded=1), chunk(0, "a"), COMPLETED]
    [token] = client.sent_tokens
    assert token is not None
    assert len(token) >= 32


async def test_chat_stream_raises_on_failed_after_a_restart() -> None:
    client = ScriptedClient(
        [
            (LLM_CHAT_CHUNK, chunk(0, "x"), None, "right"),
            (LLM_CHAT_RESTARTED, restarted(2, discarded=1), None, "right"),
            (LLM_CHAT_FAILED, ChatFailed(error=CUT), None, "right"),
        ]
    )
    seen: list[ChatEvent] = []

    async def read_all() -> None:
        async for event in client.chat_stream(REQUEST, timeout=5):
            seen.append(event)

    with pytest.raises(ChatFailedError, match="unavailable"):
        await read_all()

    assert seen == [chunk(0, "x"), restarted(2, discarded=1)]


async def test_a_forged_failure_does_not_end_the_stream() -> None:
    client = ScriptedClient([(LLM_CHAT_FAILED, ChatFailed(error=CUT), RUN_A, "wrong")])

    with pytest.raises(TimeoutError):
        await client.chat(REQUEST, timeout=0.2)


async def test_without_reply_tokens_no_token_is_sent_and_replies_are_not_checked() -> None:
    client = ScriptedClient([(LLM_CHAT_COMPLETED, COMPLETED, RUN_A, "none")])
    client._reply_tokens = False  # pyright: ignore[reportPrivateUsage]

    assert await client.chat(REQUEST, timeout=5) == COMPLETED
    assert client.sent_tokens == [None]
