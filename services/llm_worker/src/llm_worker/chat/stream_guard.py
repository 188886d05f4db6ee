"""Bounds on a provider stream: time to first token, idle gaps, and a total deadline.

A silent provider must never hang a request: every wait on the provider is
bounded, and the provider's stream (and its HTTP connection) is closed on timeout.

The guard also says how a stream that failed ended, because the request's next
step depends on it (see docs/llm-routing.md, "Timeouts and restarts"):

- a stream the provider closed after a long silence (`SILENT_CLOSE_FRACTION` of the
  bound then running) is a `timeout`, like one we closed ourselves;
- a connection lost after chunks were passed on is "cut after N chunks";
- a stream that simply ends without the provider finishing the answer is
  `unavailable`, never a truncated answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta, ToolCallFragment

SILENT_CLOSE_FRACTION = 0.5
"""A stream the provider closes after a silence of at least this fraction of the bound
then running (first token, or idle) failed by stalling, not by a network cut.

Tokens arrive tens of milliseconds apart, so a silence of half the idle bound (15 s by
default) is a stall by any measure; a close after it is the far side giving up on that
stall (the provider, or a proxy whose idle timeout is shorter than ours). Calling the
same deployment again would most likely stall again, so it is treated like our own idle
timeout. A brief gap before a close is an ordinary cut, which is cheap to retry."""


@dataclass(frozen=True)
class StreamTimeouts:
    """Seconds; None disables a bound.

    The defaults are what a careful operator would pick for interactive chat (see
    docs/llm-routing.md): a healthy deployment sends its first token within a few
    seconds and then tokens every few tens of milliseconds, so 30 s of silence means it
    is not going to answer, and waiting longer only delays the failover. Deployments of
    slow-starting models (long prompts, reasoning) raise `first_token` in the routing file.
    """

    first_token: float | None = 30.0
    """From the call to the first text or tool-call fragment."""
    idle: float | None = 30.0
    """Between two events after the first token."""
    total: float | None = 600.0
    """From the call to the end of the stream."""


async def guard_stream(
    stream: AsyncIterator[StreamEvent],
    timeouts: StreamTimeouts,
    *,
    provider: str,
    deadline: float | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Yield `stream`'s events, raising a `timeout` error when a bound is exceeded.

    Args:
        stream: the provider's event stream.
        timeouts: the bounds to apply.
        provider: named in the error.
        deadline: an absolute time on `clock` the stream must end by (e.g. the
            request's expiry), in addition to `timeouts.total`.
        clock: the clock bounds and silences are measured on (default: the event loop's).

    Raises:
        FerrymanError: `timeout` (retryable) when a bound is exceeded or the provider
            closed the stream after a long silence; `unavailable` (retryable) when the
            stream was cut or ended without the provider finishing the answer; the
            provider's own error otherwise.
    """
    watch = _Watchdog(timeouts, deadline, clock)
    iterator = aiter(stream)
    try:
        while True:
            watch.waiting()
            try:
                event = await anext(iterator)
            except StopAsyncIteration:
                if not watch.finished:
                    raise watch.explain_end(provider) from None
                return
            except asyncio.CancelledError:
                if (what := watch.expired()) is None:
                    raise
                raise FerrymanError(
                    ErrorCode.TIMEOUT, f"{provider} {what}", retryable=True, upstream=provider
                ) from None
            except FerrymanError as exc:
                explained = watch.explain_failure(exc, provider)
                if explained is exc:
                    raise
                raise explained from exc
            watch.received(event)
            yield event
    finally:
        watch.disarm()
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


class _Watchdog:
    """One lazily re-armed timer per stream instead of a timeout scope per event.

    Tokens arrive every few milliseconds; the bounds are seconds apart. The timer
    fires at the earliest possible expiry, re-checks against the latest event, and
    only then cancels the task, and only while it is waiting on the provider (never
    while the consumer is publishing what it got).
    """

    def __init__(
        self,
        timeouts: StreamTimeouts,
        deadline: float | None,
        clock: Callable[[], float] | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._task = asyncio.current_task()
        started = self._clock()
        ends = [t for t in (deadline, _after(started, timeouts.total)) if t is not None]
        self._end = min(ends) if ends else None
        self._first_token = timeouts.first_token
        self._first_by = _after(started, timeouts.first_token)
        self._idle = timeouts.idle
        self._last = started
        self.tokens = 0
        """Text and tool-call fragments passed on (one chunk event each)."""
        self.finished = False
        """Whether the provider finished the answer (sent its `Finish`)."""
        self._waiting = False
        self._expired: str | None = None
        self._handle: asyncio.TimerHandle | None = None

    def waiting(self) -> None:
        self._waiting = True
        if self._handle is None:
            self._check()

    def received(self, event: StreamEvent) -> None:
        self._waiting = False
        self._last = self._clock()
        if isinstance(event, Finish):
            self.finished = True
        elif isinstance(event, TextDelta | ToolCallFragment):
            self.tokens += 1
            if self.tokens == 1:
                self.disarm()  # the idle bound may come before the first-token one was due

    def expired(self) -> str | None:
        """The bound that expired (and the cancellation it caused is withdrawn), if any."""
        if self._expired is None or self._task is None:
            return None
        # Another cancellation (e.g. shutdown) pending as well: let it win.
        return self._expired if self._task.uncancel() == 0 else None

    def explain_failure(self, exc: FerrymanError, provider: str) -> FerrymanError:
        """`exc` restated as what happened to the stream (or `exc` itself).

        Only a lost connection is restated (`unavailable` without an HTTP status): an
        HTTP error or an error the provider sent says what it means already.
        """
        if exc.code is not ErrorCode.UNAVAILABLE or exc.status is not None:
            return exc
        silence = self._long_silence()
        if silence is not None:
            return FerrymanError(
                ErrorCode.TIMEOUT,
                f"{provider} stream went silent for {silence:.1f}s after"
                f" {_chunks(self.tokens)}, then was closed ({exc.message})",
                retryable=True,
                upstream=exc.upstream or provider,
            )
        if self.tokens == 0:
            return exc  # nothing was streamed: e.g. a reset before the headers
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"{provider} stream was cut after {_chunks(self.tokens)} ({exc.message})",
            retryable=True,
            upstream=exc.upstream or provider,
        )

    def explain_end(self, provider: str) -> FerrymanError:
        """The error of a stream that ended without the provider finishing the answer."""
        silence = self._long_silence()
        if silence is not None:
            return FerrymanError(
                ErrorCode.TIMEOUT,
                f"{provider} stream went silent for {silence:.1f}s after"
                f" {_chunks(self.tokens)}, then ended unfinished",
                retryable=True,
                upstream=provider,
            )
        return FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"{provider} stream ended after {_chunks(self.tokens)} without finishing the answer",
            retryable=True,
            upstream=provider,
        )

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _long_silence(self) -> float | None:
        """Seconds since the last event, when that is a stall of the bound now running."""
        bound = self._idle if self.tokens else self._first_token
        silence = self._clock() - self._last
        if bound is None or silence < bound * SILENT_CLOSE_FRACTION:
            return None
        return silence

    def _next(self) -> tuple[float, str] | None:
        candidates: list[tuple[float, str]] = []
        if self._end is not None:
            candidates.append((self._end, "did not finish within the request's time budget"))
        if not self.tokens and self._first_by is not None:
            candidates.append((self._first_by, "sent no first token in time"))
        if self.tokens and self._idle is not None:
            candidates.append((self._last + self._idle, f"stream was idle for {self._idle:g}s"))
        return min(candidates) if candidates else None

    def _check(self) -> None:
        self._handle = None
        upcoming = self._next()
        if upcoming is None:
            return
        when, what = upcoming
        if not self._waiting:
            return  # re-armed by the next `waiting()`
        now = self._clock()
        if now >= when and self._task is not None:
            self._expired = what
            self._task.cancel()
        else:
            self._handle = self._loop.call_later(when - now, self._check)


def _after(start: float, seconds: float | None) -> float | None:
    return None if seconds is None else start + seconds


def _chunks(count: int) -> str:
    return f"{count} chunk" if count == 1 else f"{count} chunks"
