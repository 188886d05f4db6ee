"""Cancels by request: a cancel for a running request cancels its task (the SDK then sends
`notifications/cancelled` to the server); a cancel for a request not seen yet is remembered
for a window, and the request fails `cancelled` when it arrives."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

RequestKey = tuple[str, str]
"""(`ce_source`, `ce_id`): what identifies a request."""


class CancelledByRequest(Exception):
    """The request was cancelled by a cancel event."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "cancelled by request")
        self.reason = reason


class CancelBoard:
    """Running requests and early cancels.

    Args:
        window: seconds an early cancel is remembered.
        max_early: most early cancels remembered (oldest forgotten first).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        window: float,
        max_early: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_early = max_early
        self._clock = clock
        self._early: OrderedDict[RequestKey, tuple[float, str | None]] = OrderedDict()
        self._running: dict[RequestKey, tuple[asyncio.Task[object], list[str | None]]] = {}
        self.cancelled = 0

    def cancel(self, key: RequestKey, reason: str | None = None) -> bool:
        """Cancel a request; return whether it was running here.

        The cancel is remembered for the window either way: a rerun of the request (its
        terminal event was not published, or it is redelivered) fails `cancelled` too.
        """
        self._early[key] = (self._clock() + self._window, reason)
        self._early.move_to_end(key)
        while len(self._early) > self._max_early:
            self._early.popitem(last=False)
        running = self._running.get(key)
        if running is not None:
            task, reasons = running
            reasons.append(reason)
            task.cancel()
            self.cancelled += 1
            return True
        return False

    def take_early(self, key: RequestKey) -> tuple[bool, str | None]:
        """Whether a cancel for `key` arrived within the window (and its reason)."""
        found = self._early.get(key)
        if found is None:
            return False, None
        if found[0] <= self._clock():
            del self._early[key]
            return False, None
        return True, found[1]

    def requested(self, key: RequestKey) -> bool:
        """Whether a cancel event is cancelling the running request `key` (not a shutdown)."""
        running = self._running.get(key)
        return running is not None and bool(running[1])

    async def run(self, key: RequestKey, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` as a cancellable request.

        Raises:
            CancelledByRequest: a cancel for `key` arrived before or during the work.
            asyncio.CancelledError: the worker itself is stopping (not a cancel event).
        """
        early, reason = self.take_early(key)
        if early:
            work.close()
            self.cancelled += 1
            raise CancelledByRequest(reason)
        task = asyncio.ensure_future(work)
        reasons: list[str | None] = []
        self._running[key] = (task, reasons)  # pyright: ignore[reportArgumentType]
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if reasons and (current is None or current.cancelling() == 0):
                raise CancelledByRequest(reasons[0]) from None
            raise
        finally:
            if self._running.get(key, (None,))[0] is task:
                del self._running[key]

    def running(self) -> int:
        """Requests registered as running."""
        return len(self._running)
