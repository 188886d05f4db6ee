"""Bounds on a provider stream: time to first token, idle gaps, and a total deadline.

A silent provider must never hang a request: every wait on the provider is
bounded, and the provider's stream (and its HTTP connection) is closed on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llm_worker.streaming import StreamEvent, TextDelta, ToolCallFragment
from shared.contracts import ErrorCode, FerrymanError


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
    loop = asyncio.get_running_loop()
    started = loop.time()
    ends = [t for t in (deadline, _after(started, timeouts.total)) if t is not None]
    end = min(ends) if ends else None
    first_by = _after(started, timeouts.first_token)
    saw_token = False
    iterator = aiter(stream)
    try:
        while True:
            limit, what = _next_limit(loop.time(), end, first_by, timeouts.idle, saw_token)
            try:
                async with asyncio.timeout(limit):
                    event = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise FerrymanError(
                    ErrorCode.TIMEOUT, f"{provider} {what}", retryable=True, provider=provider
                ) from exc
            if isinstance(event, TextDelta | ToolCallFragment):
                saw_token = True
            yield event
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _after(start: float, seconds: float | None) -> float | None:
    return None if seconds is None else start + seconds


def _next_limit(
    now: float, end: float | None, first_by: float | None, idle: float | None, saw_token: bool
) -> tuple[float | None, str]:
    """The seconds the next event may take, and how to describe exceeding them."""
    candidates: list[tuple[float, str]] = []
    if end is not None:
        candidates.append((end - now, "did not finish within the request's time budget"))
    if not saw_token and first_by is not None:
        candidates.append((first_by - now, "sent no first token in time"))
    if saw_token and idle is not None:
        candidates.append((idle, f"stream was idle for {idle:g}s"))
    if not candidates:
        return None, ""
    seconds, what = min(candidates)
    return max(seconds, 0.0), what
