"""Bounds on a provider stream: time to first token, idle gaps, and a total deadline.

A silent provider must never hang a request: every wait on the provider is
bounded, and the provider's stream (and its HTTP connection) is closed on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ferryman.contracts import ErrorCode, FerrymanError
from llm_worker.streaming import StreamEvent, TextDelta, ToolCallFragment


@dataclass(frozen=True)
class StreamTimeouts:
    """Seconds; None disables a bound."""

    first_token: float | None = 120.0
    """From the call to the first text or tool-call fragment."""
    idle: float | None = 60.0
    """Between two events after the first token."""
    total: float | None = 600.0
    """From the call to the end of the stream."""


async def guard_stream(
    stream: AsyncIterator[StreamEvent],
    timeouts: StreamTimeouts,
    *,
    provider: str,
    deadline: float | None = None,
) -> AsyncIterator[StreamEvent]:
    """Yield `stream`'s events, raising a `timeout` error when a bound is exceeded.

    Args:
        stream: the provider's event stream.
        timeouts: the bounds to apply.
        provider: named in the error.
        deadline: an absolute `loop.time()` the stream must end by (e.g. the request's
            expiry), in addition to `timeouts.total`.

    Raises:
        FerrymanError: `timeout` (retryable) when a bound is exceeded.
    """
    watch = _Watchdog(timeouts, deadline)
    iterator = aiter(stream)
    try:
        while True:
            watch.waiting()
            try:
                event = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if (what := watch.expired()) is None:
                    raise
                raise FerrymanError(
                    ErrorCode.TIMEOUT, f"{provider} {what}", retryable=True, provider=provider
                ) from None
            watch.received(isinstance(event, TextDelta | ToolCallFragment))
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

    def __init__(self, timeouts: StreamTimeouts, deadline: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        started = self._loop.time()
        ends = [t for t in (deadline, _after(started, timeouts.total)) if t is not None]
        self._end = min(ends) if ends else None
        self._first_by = _after(started, timeouts.first_token)
        self._idle = timeouts.idle
        self._last = started
        self._saw_token = False
        self._waiting = False
        self._expired: str | None = None
        self._handle: asyncio.TimerHandle | None = None

    def waiting(self) -> None:
        self._waiting = True
        if self._handle is None:
            self._check()

    def received(self, token: bool) -> None:
        self._waiting = False
        self._last = self._loop.time()
        if token and not self._saw_token:
            self._saw_token = True
            self.disarm()  # the idle bound may come before the first-token one was due

    def expired(self) -> str | None:
        """The bound that expired (and the cancellation it caused is withdrawn), if any."""
        if self._expired is None or self._task is None:
            return None
        # Another cancellation (e.g. shutdown) pending as well: let it win.
        return self._expired if self._task.uncancel() == 0 else None

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _next(self) -> tuple[float, str] | None:
        candidates: list[tuple[float, str]] = []
        if self._end is not None:
            candidates.append((self._end, "did not finish within the request's time budget"))
        if not self._saw_token and self._first_by is not None:
            candidates.append((self._first_by, "sent no first token in time"))
        if self._saw_token and self._idle is not None:
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
        if self._loop.time() >= when and self._task is not None:
            self._expired = what
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(when, self._check)


def _after(start: float, seconds: float | None) -> float | None:
    return None if seconds is None else start + seconds
