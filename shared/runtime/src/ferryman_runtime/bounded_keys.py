"""State per key where producers choose some of the keys, kept within a bound.

A worker keeps state (a circuit breaker, a Retry-After hold, …) per upstream. Upstreams
an operator configured are few and kept for good; upstreams a producer names ad hoc (a
model requested directly) could be anything, so they live in a bounded LRU map.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedKeys(Generic[V]):
    """Values per key, created on first use: listed keys are kept for good, ad hoc keys in a
    least-recently-used map of at most `max_ad_hoc` entries.

    An ad hoc key belongs to a group (e.g. `openai/*`) that stands for it where only a few
    names may appear (metric labels). When the map is full, a new ad hoc key takes the
    place of the least recently used idle entry or, when none is idle, of the least
    recently used entry: memory stays bounded whatever producers send. Whoever still holds
    a dropped value may go on using it; it is only no longer shared.

    Args:
        make: creates the value of a new key.
        max_ad_hoc: most ad hoc keys kept at once.
        idle: whether dropping a value loses nothing worth keeping (dropped first).

    Raises:
        ValueError: `max_ad_hoc` is below 1.
    """

    def __init__(
        self,
        make: Callable[[str], V],
        *,
        max_ad_hoc: int,
        idle: Callable[[V], bool] = lambda _: True,
    ) -> None:
        if max_ad_hoc < 1:
            raise ValueError(f"max_ad_hoc must be at least 1, got {max_ad_hoc!r}")
        self._make = make
        self._max_ad_hoc = max_ad_hoc
        self._idle = idle
        self._listed: dict[str, V] = {}
        self._ad_hoc: OrderedDict[str, tuple[str, V]] = OrderedDict()

    def get(self, key: str, group: str | None = None) -> V:
        """The value of `key`, created when new.

        Args:
            key: the key.
            group: None lists `key` (an ad hoc key listed later is kept from then on);
                otherwise `key` is ad hoc in `group`, unless it is listed already.
        """
        if key in self._listed:
            return self._listed[key]
        entry = self._ad_hoc.get(key)
        if group is None:
            value = entry[1] if entry is not None else self._make(key)
            self._ad_hoc.pop(key, None)
            self._listed[key] = value
            return value
        if entry is not None:
            self._ad_hoc.move_to_end(key)
            return entry[1]
        if len(self._ad_hoc) >= self._max_ad_hoc:
            self._drop_one()
        value = self._make(key)
        self._ad_hoc[key] = (group, value)
        return value

    def peek(self, key: str) -> V | None:
        """The value of `key` if it has one (nothing is created, recency is unchanged)."""
        if key in self._listed:
            return self._listed[key]
        entry = self._ad_hoc.get(key)
        return entry[1] if entry is not None else None

    def discard(self, key: str) -> None:
        """Forget `key` (nothing happens when it has no value)."""
        self._listed.pop(key, None)
        self._ad_hoc.pop(key, None)

    def listed(self) -> list[tuple[str, V]]:
        """The listed keys and their values, sorted by key."""
        return sorted(self._listed.items())

    def ad_hoc(self) -> Iterator[tuple[str, str, V]]:
        """`(key, group, value)` of the ad hoc keys, most recently used first."""
        for key, (group, value) in reversed(list(self._ad_hoc.items())):
            yield key, group, value

    def __len__(self) -> int:
        return len(self._listed) + len(self._ad_hoc)

    def _drop_one(self) -> None:
        for key, (_, value) in self._ad_hoc.items():  # oldest first
            if self._idle(value):
                del self._ad_hoc[key]
                return
        self._ad_hoc.popitem(last=False)
