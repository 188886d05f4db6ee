"""A silent provider never hangs a request: first-token, idle and total bounds; and a failed
stream is reported as what happened to it (silent then closed, cut, or unfinished)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.chat.stream_guard import StreamTimeouts, guard_stream
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta
from llm_worker.settings import LlmWorkerSettings


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


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cut(status: int | None = None) -> FerrymanError:
    return FerrymanError(
        ErrorCode.UNAVAILABLE, "cannot reach P: Connection error", upstream="p", status=status
    )


async def _fail_after(
    clock: ManualClock,
    tokens: int,
    silence: float,
    error: FerrymanError | None,
) -> AsyncIterator[StreamEvent]:
    """`tokens` tokens, then `silence` seconds on `clock`, then `error` (None: the stream ends)."""
    for i in range(tokens):
        yield TextDelta(text=f"t{i}")
    clock.now += silence
    if error is not None:
        raise error


async def _guarded_failure(
    clock: ManualClock, tokens: int, silence: float, error: FerrymanError | None
) -> tuple[int, FerrymanError]:
    timeouts = StreamTimeouts(first_token=30, idle=30, total=None)
    stream = _fail_after(clock, tokens, silence, error)
    passed: list[StreamEvent] = []

    async def consume() -> None:
        async for event in guard_stream(stream, timeouts, provider="p", clock=clock):
            passed.append(event)

    with pytest.raises(FerrymanError) as failure:
        await consume()
    return len(passed), failure.value


def test_the_default_bounds_are_thirty_seconds_and_the_worker_settings_agree() -> None:
    defaults = StreamTimeouts()
    fields = LlmWorkerSettings.model_fields

    assert (defaults.first_token, defaults.idle) == (30.0, 30.0)
    assert fields["first_token_timeout"].default == defaults.first_token
    assert fields["stream_idle_timeout"].default == defaults.idle


@pytest.mark.parametrize(
    ("tokens", "silence", "bound"),
    [(3, 15.0, "idle"), (3, 29.0, "idle"), (0, 20.0, "first token")],
    ids=["half-the-idle-bound", "just-short-of-the-idle-bound", "before-the-first-token"],
)
async def test_a_connection_closed_after_a_long_silence_is_a_timeout(
    tokens: int, silence: float, bound: str
) -> None:
    clock = ManualClock()

    passed, error = await _guarded_failure(clock, tokens, silence, _cut())

    assert passed == tokens
    assert (error.code, error.retryable, error.upstream) == (ErrorCode.TIMEOUT, True, "p")
    assert f"went silent for {silence:.1f}s after {tokens} chunks, then was closed" in error.message
    assert isinstance(error.__cause__, FerrymanError)  # the provider's error is kept as cause


async def test_a_connection_closed_without_a_long_silence_after_chunks_is_a_cut() -> None:
    clock = ManualClock()

    passed, error = await _guarded_failure(clock, 2, 14.9, _cut())

    assert passed == 2
    assert (error.code, error.retryable) == (ErrorCode.UNAVAILABLE, True)
    assert error.message == "p stream was cut after 2 chunks (cannot reach P: Connection error)"


async def test_a_failure_before_any_chunk_without_a_long_silence_is_passed_on_unchanged() -> None:
    clock, original = ManualClock(), _cut()

    _, error = await _guarded_failure(clock, 0, 1.0, original)

    assert error is original


@pytest.mark.parametrize(
    "original",
    [
        FerrymanError(ErrorCode.UNAVAILABLE, "P returned 503", upstream="p", status=503),
        FerrymanError(ErrorCode.RATE_LIMITED, "slow down", upstream="p", status=429),
    ],
    ids=["http-503", "http-429"],
)
async def test_an_error_the_provider_answered_with_is_never_restated(
    original: FerrymanError,
) -> None:
    clock = ManualClock()

    _, error = await _guarded_failure(clock, 2, 25.0, original)

    assert error is original


@pytest.mark.parametrize(
    ("silence", "code", "says"),
    [
        (0.1, ErrorCode.UNAVAILABLE, "p stream ended after 1 chunk without finishing the answer"),
        (16.0, ErrorCode.TIMEOUT, "p stream went silent for 16.0s after 1 chunk, then ended"),
    ],
    ids=["at-once", "after-a-long-silence"],
)
async def test_a_stream_ending_unfinished_says_so(
    silence: float, code: ErrorCode, says: str
) -> None:
    clock = ManualClock()

    passed, error = await _guarded_failure(clock, 1, silence, None)

    assert passed == 1
    assert (error.code, error.retryable) == (code, True)
    assert says in error.message
