"""What one replica observes about each upstream: load, latency and recent failures.

Balancing reads `in_flight` (least in-flight) and `latency_ewma` (lowest latency);
health reads the passive window and the last active probe; `/metrics` reads the
cumulative call counts and `in_flight` at scrape time (`UpstreamStatsCollector`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CallOutcome = Literal["ok", "failed", "rejected"]
"""How a call ended: `ok`, `failed` (the upstream's fault) or `rejected` (a client error,
not counted against the upstream)."""

CALL_OUTCOMES: tuple[CallOutcome, ...] = ("ok", "failed", "rejected")

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
        self.calls: dict[CallOutcome, int] = dict.fromkeys(CALL_OUTCOMES, 0)
        """Calls finished since the process started, by outcome (never reset)."""

    def started(self) -> None:
        """A call to the upstream began."""
        self.in_flight += 1

    def finished(
        self, *, failed: bool, rejected: bool = False, latency: float | None = None
    ) -> None:
        """A call ended; `failed` means an upstream (retryable) failure.

        Args:
            failed: whether the upstream failed (bad requests do not count).
            rejected: the upstream refused the request as the client's fault (a bad
                request, not found, …): counted `rejected`, and as a success for health.
                Ignored when `failed` is set.
            latency: the call's latency in seconds (the LLM worker: time to first token), if known.
        """
        self.in_flight = max(0, self.in_flight - 1)
        self._outcomes.append((self._clock(), failed))
        self.calls["failed" if failed else "rejected" if rejected else "ok"] += 1
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

    def items(self) -> list[tuple[str, UpstreamStats]]:
        """Every upstream's stats, by name."""
        return list(self._stats.items())

    def __len__(self) -> int:
        return len(self._stats)


class UpstreamStatsCollector(Collector):
    """`ferryman_upstream_calls_total{upstream,outcome}` and
    `ferryman_upstream_in_flight{upstream}`, read from a `StatsBoard` at every scrape.

    Register it once per worker: `registry.register(UpstreamStatsCollector(board))`.
    """

    def __init__(self, board: StatsBoard) -> None:
        self._board = board

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        calls = CounterMetricFamily(
            "ferryman_upstream_calls",
            "Calls to an upstream, by outcome: ok, failed (the upstream's fault) or rejected"
            " (a client error, not counted against the upstream).",
            labels=["upstream", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "ferryman_upstream_in_flight",
            "Calls to an upstream in progress on this replica.",
            labels=["upstream"],
        )
        return calls, in_flight

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        calls, in_flight = self._families()
        for name, stats in sorted(self._board.items(), key=lambda item: item[0]):
            for outcome, count in stats.calls.items():
                calls.add_metric([name, outcome], count)
            in_flight.add_metric([name], stats.in_flight)
        return calls, in_flight
