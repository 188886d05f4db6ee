"""The client's side of a tool loop: chunks sequenced per step, the tool-loop events passed on
in arrival order, the request id known up front, and cancels published only when asked."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel, ValidationError

from ferryman.client import ChatEvent, ChatFailedError, FerrymanClient, ReplySequencer
from ferryman.codec import header_value
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_REQUESTED,
    LLM_CHAT_RESTARTED,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ChatRestarted,
    ChunkDelta,
    ErrorCode,
    ErrorInfo,
    Latency,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from ferryman.contracts.mcp import DEFAULT_MCP_CONTROL_TOPIC, MCP_CANCEL_REQUESTED, CancelRequest
from ferryman.replies import ReplyRole, RunRestarted, default_registry
from ferryman.shortcuts import request_from_prompt
from tests.fakes.chat_bus import CANCELLED, RUN, ScriptedBus

CUT = ErrorInfo(code=ErrorCode.UNAVAILABLE, message="stream cut", retryable=True)


def chunk(index: int, text: str = "", *, step: int | None = None, attempt: int = 1) -> ChatChunk:
    return ChatChunk(
        index=index, step=step, attempt=attempt, delta=ChunkDelta(content=text or None)
    )


def restarted(attempt: int, *, step: int | None, discarded: int = 1) -> ChatRestarted:
    return ChatRestarted(
        attempt=attempt, discarded_chunks=discarded, reason=CUT, deployment="b", step=step
    )


def progress(step: int, sequence: int) -> ChatProgress:
    return ChatProgress(stage="step_started", step=step, sequence=sequence)


CALLED = ToolCallStarted(
    step=0,
    call_id="call-1",
    name="time__get_current_time",
    server="time",
    tool="get_current_time",
    arguments='{"timezone":"UTC"}',
    tool_request_id="q.0.0",
)
RESULT = ToolCallFinished(
    step=0,
    call_id="call-1",
    server="time",
    tool="get_current_time",
    tool_request_id="q.0.0",
    content='{"datetime":"2025-01-01T00:00:00Z"}',
    duration_ms=12.0,
)
COMPLETED = ChatCompleted(
    content="It is midnight.",
    tool_calls=[],
    finish_reason="stop",
    usage=Usage(input_tokens=10, output_tokens=5),
    provider="mock",
    model="echo",
    chunk_count=2,
    latency_ms=Latency(total=30.0),
)


def accepted(events: list[BaseModel]) -> list[BaseModel]:
    sequencer = ReplySequencer()
    return [shown for event in events for shown in sequencer.accept(event)]


def test_the_tool_loop_replies_are_registered_as_progress() -> None:
    replies = default_registry().kind(LLM_CHAT_REQUESTED).replies
    roles = {name: (reply.model, reply.role) for name, reply in replies.items()}

    assert roles[LLM_CHAT_PROGRESS] == (ChatProgress, ReplyRole.PROGRESS)
    assert roles[LLM_CHAT_TOOL_CALLED] == (ToolCallStarted, ReplyRole.PROGRESS)
    assert roles[LLM_CHAT_TOOL_RESULT] == (ToolCallFinished, ReplyRole.PROGRESS)
    assert roles[LLM_CHAT_CHUNK] == (ChatChunk, ReplyRole.CHUNK)


def test_each_step_counts_its_chunks_from_zero_and_tool_events_pass_in_arrival_order() -> None:
    events: list[BaseModel] = [
        progress(0, 0),
        chunk(0, "Let me ", step=0),
        chunk(1, "check.", step=0),
        CALLED,
        RESULT,
        progress(1, 1),
        chunk(0, "It is ", step=1),
        chunk(1, "midnight.", step=1),
        COMPLETED,
    ]

    assert accepted(events) == events


def test_a_chunk_without_a_step_belongs_to_step_zero() -> None:
    events: list[BaseModel] = [chunk(0, "a"), chunk(1, "b", step=0), chunk(2, "c")]

    assert accepted(events) == events


def test_a_steps_first_chunk_must_have_index_zero_and_late_chunks_of_earlier_steps_drop() -> None:
    events: list[BaseModel] = [
        chunk(0, "a", step=0),
        chunk(1, "b", step=1),  # step 1 begins at index 0
        chunk(0, "c", step=1),
        chunk(0, "a", step=0),  # a redelivered chunk of the earlier step
        chunk(1, "d", step=1),
    ]

    assert accepted(events) == [chunk(0, "a", step=0), chunk(0, "c", step=1), chunk(1, "d", step=1)]


def test_a_restart_of_a_step_discards_only_that_steps_earlier_attempt() -> None:
    sequencer = ReplySequencer()
    events: list[BaseModel] = [
        chunk(0, "x", step=0),
        chunk(1, "y", step=0),
        chunk(0, "p", step=1),
        restarted(2, step=1),
        chunk(1, "q", step=1),  # late chunk of step 1's failed attempt
        chunk(0, "a", step=1, attempt=2),
        chunk(1, "y", step=0),  # a duplicate of the step that stands
        chunk(1, "b", step=1, attempt=2),
        restarted(2, step=1),  # a repeated restart
        chunk(2, "c", step=1, attempt=2),
    ]

    shown = [out for event in events for out in sequencer.accept(event)]

    assert shown == [
        chunk(0, "x", step=0),
        chunk(1, "y", step=0),
        chunk(0, "p", step=1),
        restarted(2, step=1),
        chunk(0, "a", step=1, attempt=2),
        chunk(1, "b", step=1, attempt=2),
        chunk(2, "c", step=1, attempt=2),
    ]
    assert (sequencer.step, sequencer.attempt, sequencer.next_index) == (1, 2, 3)
    assert sequencer.shown_chunks == 5


def test_attempts_may_be_counted_across_the_steps_but_never_ahead_of_a_restart() -> None:
    events: list[BaseModel] = [
        chunk(0, "x", step=0),
        restarted(2, step=0),
        chunk(0, "a", step=0, attempt=2),
        chunk(0, "b", step=1, attempt=2),  # the worker kept counting: attempt 2 goes on
        chunk(0, "z", step=2, attempt=3),  # attempt 3 was never announced
        chunk(1, "c", step=1, attempt=2),
    ]

    assert accepted(events) == [
        chunk(0, "x", step=0),
        restarted(2, step=0),
        chunk(0, "a", step=0, attempt=2),
        chunk(0, "b", step=1, attempt=2),
        chunk(1, "c", step=1, attempt=2),
    ]


def test_a_rerun_discards_the_chunks_of_every_step_and_starts_over() -> None:
    sequencer = ReplySequencer()
    run_b = "1700000005000-bbbbbbbbbbbb"
    first = [chunk(0, "x", step=0), CALLED, RESULT, chunk(0, "y", step=1), chunk(1, "z", step=1)]
    for event in first:
        sequencer.accept(event, run_id=RUN)

    shown = sequencer.accept(chunk(0, "a", step=0), run_id=run_b)
    late = sequencer.accept(chunk(2, "w", step=1), run_id=RUN)
    again = sequencer.accept(chunk(0, "b", step=1), run_id=run_b)

    assert shown == [
        RunRestarted(run_id=run_b, previous_run_id=RUN, discarded_chunks=3),
        chunk(0, "a", step=0),
    ]
    assert late == []
    assert again == [chunk(0, "b", step=1)]


TOOL_LOOP = [
    (LLM_CHAT_PROGRESS, progress(0, 0)),
    (LLM_CHAT_CHUNK, chunk(0, "Let me check.", step=0)),
    (LLM_CHAT_TOOL_CALLED, CALLED, "called-1"),
    (LLM_CHAT_TOOL_CALLED, CALLED, "called-1"),  # redelivered: the same ce_id
    (LLM_CHAT_TOOL_RESULT, RESULT),
    (LLM_CHAT_PROGRESS, progress(1, 1)),
    (LLM_CHAT_CHUNK, chunk(0, "It is ", step=1)),
    (LLM_CHAT_RESTARTED, restarted(2, step=1)),
    (LLM_CHAT_CHUNK, chunk(0, "It is ", step=1, attempt=2)),
    (LLM_CHAT_CHUNK, chunk(1, "midnight.", step=1, attempt=2)),
    (LLM_CHAT_COMPLETED, COMPLETED),
]
REQUEST = request_from_prompt(
    "What time is it?",
    model="mock/echo",
    tools=[{"type": "mcp", "server": "time"}],
    tool_execution={"mode": "auto", "max_steps": 3},
)


async def test_chat_stream_yields_the_tool_loop_in_order_and_names_its_request_first() -> None:
    bus = ScriptedBus(TOOL_LOOP)
    client = bus.attach(FerrymanClient("unused:9092", source="/shop/checkout"))

    stream = client.chat_stream(REQUEST, timeout=5)
    request_id = stream.request_id
    assert bus.published == []  # nothing is sent before the stream is read
    events: list[ChatEvent] = [event async for event in stream]

    assert events == [
        progress(0, 0),
        chunk(0, "Let me check.", step=0),
        CALLED,
        RESULT,
        progress(1, 1),
        chunk(0, "It is ", step=1),
        restarted(2, step=1),
        chunk(0, "It is ", step=1, attempt=2),
        chunk(1, "midnight.", step=1, attempt=2),
        COMPLETED,
    ]
    [sent] = bus.published
    assert header_value(sent.headers, "ce_id") == request_id == stream.request_id
    assert header_value(sent.headers, "ce_source") == "/shop/checkout" == stream.source
    data = json.loads(sent.value or b"")
    assert data["tools"] == [{"type": "mcp", "server": "time", "tools": ["*"]}]
    assert data["tool_execution"]["mode"] == "auto"
    assert data["tool_execution"]["max_steps"] == 3


async def test_a_mapping_request_takes_mcp_toolsets_and_tool_execution() -> None:
    bus = ScriptedBus([(LLM_CHAT_COMPLETED, COMPLETED)])
    client = bus.attach(FerrymanClient("unused:9092"))
    request = {
        "model": "mock/echo",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "mcp", "server": "time", "tools": ["get_*"]}],
        "tool_execution": {"mode": "auto", "tool_timeout": 5},
    }

    assert await client.chat(request, timeout=5) == COMPLETED

    data = json.loads(bus.published[0].value or b"")
    assert data["tools"] == [{"type": "mcp", "server": "time", "tools": ["get_*"]}]
    assert data["tool_execution"]["tool_timeout"] == 5.0


async def test_cancel_publishes_a_cancel_request_keyed_by_the_request_id() -> None:
    bus = ScriptedBus([(LLM_CHAT_CHUNK, chunk(0, "Let me", step=0))], on_cancel=[CANCELLED])
    client = bus.attach(FerrymanClient("unused:9092", source="/shop/checkout"))
    stream = client.chat_stream(REQUEST, timeout=5)

    first = await anext(stream)
    await client.cancel(stream.request_id, reason="user left")
    with pytest.raises(ChatFailedError) as failed:
        await anext(stream)

    assert first == chunk(0, "Let me", step=0)
    assert failed.value.error.code == ErrorCode.CANCELLED
    [cancel] = bus.cancels
    assert cancel.topic == DEFAULT_MCP_CONTROL_TOPIC == "mcp.control"
    assert cancel.key == stream.request_id.encode()
    assert cancel.type == MCP_CANCEL_REQUESTED
    assert header_value(cancel.headers, "ce_source") == "/shop/checkout"
    assert bus.cancel_requests() == [
        CancelRequest(request_id=stream.request_id, source="/shop/checkout", reason="user left")
    ]


async def test_cancel_names_another_source_and_control_topic_and_the_stream_can_cancel() -> None:
    bus = ScriptedBus([])
    client = bus.attach(FerrymanClient("unused:9092", source="/me"))

    await client.cancel("req-7", source="/someone-else", control_topic="t.control")
    await client.chat_stream(REQUEST, request_id="req-8").cancel()

    assert [(c.topic, c.key) for c in bus.cancels] == [
        ("t.control", b"req-7"),
        ("mcp.control", b"req-8"),
    ]
    assert bus.cancel_requests() == [
        CancelRequest(request_id="req-7", source="/someone-else"),
        CancelRequest(request_id="req-8", source="/me"),
    ]
    ids = {header_value(c.headers, "ce_id") for c in bus.cancels}
    assert len(ids) == 2


async def test_an_invalid_cancel_is_refused_before_anything_is_published() -> None:
    bus = ScriptedBus([])
    client = bus.attach(FerrymanClient("unused:9092"))

    with pytest.raises(ValidationError):
        await client.cancel("")
    with pytest.raises(ValidationError):
        await client.cancel("req-1", reason="x" * 1001)

    assert bus.published == []


async def test_stopping_the_iteration_does_not_cancel_the_request() -> None:
    bus = ScriptedBus(
        [(LLM_CHAT_CHUNK, chunk(0, "Let me", step=0)), (LLM_CHAT_TOOL_CALLED, CALLED)]
    )
    client = bus.attach(FerrymanClient("unused:9092"))
    stream = client.chat_stream(REQUEST, timeout=5)
    seen: list[ChatEvent] = []
    both_seen = asyncio.Event()

    async def consume() -> None:
        async for event in stream:
            seen.append(event)
            if len(seen) == 2:
                both_seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(both_seen.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert seen == [chunk(0, "Let me", step=0), CALLED]
    assert [p.type for p in bus.published] == [LLM_CHAT_REQUESTED]
