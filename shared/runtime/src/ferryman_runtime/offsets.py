"""Per-partition offset bookkeeping for out-of-order completion.

Records of one partition finish in any order; the offset that may be committed
is the lowest one not yet finished (Confluent Parallel Consumer's scheme), so a
crash never skips a record that was still in flight.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Tracks the in-flight offsets of one partition and its committable offset."""

    __slots__ = ("_done", "_open", "_pending", "committable", "committed", "next_fetch")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._open: set[int] = set()
        self._done: set[int] = set()
        self.committable: int | None = None
        """The offset to commit: every record below it has finished."""
        self.committed: int | None = None
        """The last offset successfully committed."""
        self.next_fetch: int | None = None
        """One past the highest offset handed out, to resume fetching after a rebalance."""

    def add(self, offset: int) -> None:
        """Register a fetched record. Offsets must be added in increasing order.

        Raises:
            ValueError: `offset` is not above every offset added before.
        """
        if self.next_fetch is not None and offset < self.next_fetch:
            raise ValueError(f"offset {offset} added after {self.next_fetch - 1}")
        self._pending.append(offset)
        self._open.add(offset)
        self.next_fetch = offset + 1

    def seen(self, offset: int) -> bool:
        """Return whether `offset` was already handed out (a refetch after a rebalance)."""
        return self.next_fetch is not None and offset < self.next_fetch

    def finish(self, offset: int) -> bool:
        """Mark a record finished; return whether the committable offset advanced.

        Offsets that are not in flight (unknown, or finished before) are ignored.
        """
        if offset not in self._open:
            return False
        self._open.discard(offset)
        self._done.add(offset)
        advanced = False
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self.committable = head + 1
            advanced = True
        return advanced

    @property
    def in_flight(self) -> int:
        """The number of records added and not yet finished."""
        return len(self._open)

    def needs_commit(self) -> bool:
        """Return whether the committable offset is ahead of the committed one."""
        return self.committable is not None and self.committable != self.committed
