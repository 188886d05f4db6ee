"""Tool result cache: keyed by server, tool definition hash, canonical arguments and tenant
(one tenant never gets another's result), with a TTL and an entry bound."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ferryman.contracts.mcp import ToolCallCompleted
from mcp_worker.catalog.definitions import canonical_json


def cache_key(
    server: str, tool: str, definition_hash: str, arguments: dict[str, Any], tenant: str | None
) -> str:
    """The key of one call's result."""
    material = canonical_json([server, tool, definition_hash, arguments, tenant or ""])
    return hashlib.sha256(material.encode()).hexdigest()


class ResultCache:
    """An LRU of completed tool calls with per-entry expiry.

    Args:
        max_entries: most entries kept (0: nothing is cached).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ToolCallCompleted]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ToolCallCompleted | None:
        """The cached result, if fresh."""
        found = self._entries.get(key)
        if found is None or found[0] <= self._clock():
            if found is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(self, key: str, result: ToolCallCompleted, ttl: float) -> None:
        """Keep a result for `ttl` seconds (tool errors are never cached)."""
        if self._max <= 0 or result.is_error or result.truncated:
            return
        self._entries[key] = (self._clock() + ttl, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop_server(self, server: str) -> None:
        """Forget a server's results (it was removed or changed)."""
        for key in [k for k, (_, r) in self._entries.items() if r.server == server]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
