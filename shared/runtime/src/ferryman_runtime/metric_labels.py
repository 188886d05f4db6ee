"""Label values a producer or a model chooses, kept to a bounded set.

A metric label must stay low-cardinality: every distinct value is a time series kept by
Prometheus for good. Tenants and directly requested models are named by producers, so a
`LabelBudget` lets through the values the operator configured and the first few others a
process sees; everything later is counted under `other`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection

OTHER = "other"
"""The label value of everything past the budget."""

NONE = "none"
"""The label value of a missing (None or empty) value."""


class LabelBudget:
    """Maps label values to a bounded set: configured values pass, then the first
    `max_dynamic` others, then `other`.

    Args:
        known: the values the operator configured (read on every miss, so a hot reload that
            adds a tenant or a route is seen at once).
        max_dynamic: how many other distinct values may pass, per process.
        other: the value everything past the budget becomes.

    Raises:
        ValueError: `max_dynamic` is negative.
    """

    def __init__(
        self,
        known: Callable[[], Collection[str]] = frozenset,
        *,
        max_dynamic: int,
        other: str = OTHER,
    ) -> None:
        if max_dynamic < 0:
            raise ValueError(f"max_dynamic must be 0 or more, got {max_dynamic!r}")
        self._known = known
        self._max_dynamic = max_dynamic
        self._other = other
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        """The label value standing for `value`."""
        if not value:
            return NONE
        if value in self._seen or value in self._known():
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._max_dynamic:
                self._seen.add(value)
                return value
        return self._other
