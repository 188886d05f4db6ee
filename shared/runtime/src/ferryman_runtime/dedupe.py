"""Skips requests whose (`ce_source`, `ce_id`) is in flight or finished recently."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RecentRequests:
    """Remembers in-flight and recently finished request keys, in bounded memory.

    Args:
        window: seconds a finished key is remembered.
        max_entries: finished keys kept at most (oldest forgotten first).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        *,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_entries = max_entries
        self._clock = clock
        self._in_flight: set[tuple[str, str]] = set()
        self._finished: OrderedDict[tuple[str, str], float] = OrderedDict()

    def try_begin(self, source: str, event_id: str) -> bool:
        """Claim a request; return False when it is in flight or finished within the window."""
        key = (source, event_id)
        self._expire()
        if key in self._in_flight or key in self._finished:
            return False
        self._in_flight.add(key)
        return True

    def finish(self, source: str, event_id: str) -> None:
        """Record that a claimed request reached its terminal event."""
        key = (source, event_id)
        self._in_flight.discard(key)
        self._finished[key] = self._clock()
        self._finished.move_to_end(key)
        while len(self._finished) > self._max_entries:
            self._finished.popitem(last=False)

    def abandon(self, source: str, event_id: str) -> None:
        """Release a claim without finishing (the request will be redelivered)."""
        self._in_flight.discard((source, event_id))

    def _expire(self) -> None:
        horizon = self._clock() - self._window
        while self._finished:
            key, finished_at = next(iter(self._finished.items()))
            if finished_at >= horizon:
                break
            del self._finished[key]
