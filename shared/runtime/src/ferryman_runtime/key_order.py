"""Per-key ordering inside a partition: records of one key run one at a time, in offset order.

Each record of a key takes a `Turn` when it is fetched (so in offset order); the turn
waits for the previous record of the same key to finish, whatever its outcome.
Records of other keys, and records without a key, do not wait.
"""
# aiokafka's annotations are partial; strict mode would flag TopicPartition uses.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition  # pyright: ignore[reportMissingTypeStubs]

_Slot = tuple[TopicPartition, bytes]


class Turn:
    """One record's place in its key's queue."""

    __slots__ = ("_done", "_order", "_previous", "_slot")

    def __init__(self, order: KeyOrder, slot: _Slot, previous: asyncio.Future[None] | None) -> None:
        self._order = order
        self._slot = slot
        self._previous = previous
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        """Wait until every earlier record of this key has finished (or was cancelled)."""
        if self._previous is not None:
            # Shielded: cancelling this record must not cancel the predecessor's marker.
            await asyncio.shield(self._previous)

    def release(self) -> None:
        """Let the next record of this key run; call exactly once, when this one ends."""
        if not self._done.done():
            self._done.set_result(None)
        self._order._released(self._slot, self._done)  # pyright: ignore[reportPrivateUsage]


class KeyOrder:
    """Queues of the keys that have records in flight, per partition."""

    def __init__(self) -> None:
        self._tails: dict[_Slot, asyncio.Future[None]] = {}

    def turn(self, tp: TopicPartition, key: bytes | None) -> Turn | None:
        """Take the next turn of `key` on `tp`; None for records without a key.

        Must be called in offset order for each partition.
        """
        if key is None:
            return None
        slot = (tp, key)
        turn = Turn(self, slot, self._tails.get(slot))
        self._tails[slot] = turn._done  # pyright: ignore[reportPrivateUsage]
        return turn

    def forget(self, tp: TopicPartition) -> None:
        """Drop the queues of `tp` (its records were cancelled with the partition)."""
        for slot in [slot for slot in self._tails if slot[0] == tp]:
            del self._tails[slot]

    @property
    def keys_in_flight(self) -> int:
        """How many (partition, key) queues have a record not yet finished."""
        return len(self._tails)

    def _released(self, slot: _Slot, done: asyncio.Future[None]) -> None:
        if self._tails.get(slot) is done:
            del self._tails[slot]
