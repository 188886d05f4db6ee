"""A silent provider never hangs a request: first-token, idle and total bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.stream_guard import StreamTimeouts, guard_stream
from llm_worker.streaming import Finish, StreamEvent, TextDelta


class ScriptedStream:
    """Yields `tokens`, then waits on `release` (never set unless the test sets it)."""

    def __init__(self, tokens: int, *, finish: bool = False) -> None:
        self.tokens = tokens
        self.finish = finish
        self.release = asyncio.Event()
        self.closed = False

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            for i in range(self.tokens):
                yield TextDelta(text=f"t{i}")
            if self.finish:
                yield Finish(reason="stop")
                return
            await self.release.wait()
        finally:
            self.closed = True


async def _drain(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


async def test_no_first_token_in_time_is_a_retryable_timeout_and_closes_the_stream() -> None:
    source = ScriptedStream(tokens=0)
    guarded = guard_stream(
        source.events(), StreamTimeouts(first_token=0.05, idle=None, total=None), provider="p"
    )

    with pytest.raises(FerrymanError) as failure:
        await _drain(guarded)

    assert (failure.value.code, failure.value.retryable) == (ErrorCode.TIMEOUT, True)
    assert "first token" in failure.value.message
    assert source.closed


async def test_a_stall_after_tokens_is_an_idle_timeout_after_the_tokens_were_passed_on() -> None:
    source = ScriptedStream(tokens=3)
    seen: list[StreamEvent] = []

    async def consume() -> None:
        timeouts = StreamTimeouts(first_token=10, idle=0.05, total=None)
        async for event in guard_stream(source.events(), timeouts, provider="p"):
            seen.append(event)

    with pytest.raises(FerrymanError) as failure:
        await consume()

    assert len(seen) == 3
    assert "idle" in failure.value.message
    assert source.closed


async def test_a_deadline_already_past_fails_at_once_even_with_generous_timeouts() -> None:
    source = ScriptedStream(tokens=0)
    deadline = asyncio.get_running_loop().time() - 1

    with pytest.raises(FerrymanError) as failure:
        await _drain(
            guard_stream(source.events(), StreamTimeouts(), provider="p", deadline=deadline)
        )

    assert "time budget" in failure.value.message


async def test_a_healthy_stream_passes_through_unchanged() -> None:
    source = ScriptedStream(tokens=4, finish=True)

    events = await _drain(guard_stream(source.events(), StreamTimeouts(), provider="p"))

    assert [type(e).__name__ for e in events] == ["TextDelta"] * 4 + ["Finish"]
    assert source.closed


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    source = ScriptedStream(tokens=1)
    got_token = asyncio.Event()

    async def consume() -> None:
        async for _ in guard_stream(source.events(), StreamTimeouts(), provider="p"):
            got_token.set()

    task = asyncio.create_task(consume())
    await got_token.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed
