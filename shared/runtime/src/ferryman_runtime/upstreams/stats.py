"""What one replica observes about each upstream: load, latency and recent failures.

Balancing reads `in_flight` (least in-flight) and `latency_ewma` (lowest latency);
health reads the passive window and the last active probe.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

_EWMA_WEIGHT = 0.3
"""Weight of the newest latency sample (recent latency matters most)."""


class UpstreamStats:
    """Counters of one upstream on this replica.

    Args:
        window: seconds of real traffic the error rate covers.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=10_000)
        self.in_flight = 0
        self.latency_ewma: float | None = None
        """Seconds; an exponentially weighted average over calls that produced a token."""
        self.probe_ok: bool | None = None
        self.probe_error: str | None = None
        self.probe_at: datetime | None = None

    def started(self) -> None:
        """A call to the upstream began."""
        self.in_flight += 1

    def finished(self, *, failed: bool, latency: float | None = None) -> None:
        """A call ended; `failed` means an upstream (retryable) failure.

        Args:
            failed: whether the upstream failed (bad requests do not count).
            latency: the call's latency in seconds (the LLM worker: time to first token), if known.
        """
        self.in_flight = max(0, self.in_flight - 1)
        self._outcomes.append((self._clock(), failed))
        if latency is not None:
            previous = self.latency_ewma
            self.latency_ewma = (
                latency
                if previous is None
                else _EWMA_WEIGHT * latency + (1 - _EWMA_WEIGHT) * previous
            )

    def probed(self, *, error: str | None, at: datetime) -> None:
        """Record an active probe's outcome (`error` None means it succeeded)."""
        self.probe_ok = error is None
        self.probe_error = error
        self.probe_at = at

    def recent(self) -> tuple[int, float]:
        """`(calls, error_rate)` over the passive window."""
        horizon = self._clock() - self._window
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < horizon:
            outcomes.popleft()
        calls = len(outcomes)
        if not calls:
            return 0, 0.0
        return calls, sum(1 for _, failed in outcomes if failed) / calls


class StatsBoard:
    """`UpstreamStats` per upstream name, created on first use (kept across reloads).

    Names are configured deployments and `provider/*` (every direct `provider/model`
    request of the provider), never a name a producer chose: the board stays small.
    """

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._stats: dict[str, UpstreamStats] = {}

    def get(self, name: str) -> UpstreamStats:
        """The stats of deployment `name`."""
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = UpstreamStats(self._window, self._clock)
        return stats

    def __len__(self) -> int:
        return len(self._stats)
