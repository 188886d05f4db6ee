"""Upstream health: passive stats and circuit state, plus an active, cheap probe.

The probe is whatever the worker passes in (the LLM worker lists models, never a
completion: health checks must not cost tokens), run once per probe group (one client
serving several deployments is probed once). A `HealthMonitor` probes and reports on
independent cadences; reports go to the health topic and `/health`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryman.contracts.errors import FerrymanError
from ferryman.contracts.health import HealthReport, HealthStatus, UpstreamHealth
from ferryman_runtime.upstreams.stats import StatsBoard, UpstreamStats

logger = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half-open"]
_CIRCUIT_STATES: dict[str, CircuitState] = {
    "closed": "closed",
    "open": "open",
    "half-open": "half-open",
}

DEGRADED_MIN_CALLS = 5
"""Fewer recent calls than this say nothing about the error rate."""
DEGRADED_ERROR_RATE = 0.2
"""A recent upstream error rate at or above this marks an upstream degraded."""

_STATUS_VALUES: dict[HealthStatus, float] = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}
_MAX_PROBE_ERROR = 500

Probe = Callable[[], Awaitable[object]]
"""A cheap call that succeeds when the upstream answers (its result is ignored)."""


@dataclass(frozen=True)
class UpstreamRef:
    """A configured upstream and how to probe it.

    Args:
        name: its configured name.
        kind: `llm`, `mcp`, `storage`, …
        labels: what else identifies it (`provider`, `model`, …).
        probe: the active probe; None when it has none.
        probe_group: upstreams with the same group share one probe per round (one client
            serving several of them); also the probe counter's label value.
        group_key: identity of the probe group (by default the probe's bound object).
    """

    name: str
    kind: str
    labels: Mapping[str, str] = field(default_factory=dict[str, str])
    probe: Probe | None = None
    probe_group: str = ""
    group_key: object = None


def upstream_health(ref: UpstreamRef, stats: UpstreamStats, circuit: str) -> UpstreamHealth:
    """Judge one upstream from this replica's stats and its circuit state.

    `unhealthy` when the circuit is open or the last probe failed; `degraded` when
    the circuit is half-open or at least `DEGRADED_MIN_CALLS` recent calls failed at
    a rate of `DEGRADED_ERROR_RATE` or more; `healthy` otherwise.

    Raises:
        ValueError: `circuit` is not `closed`, `open` or `half-open`.
    """
    state = _CIRCUIT_STATES.get(circuit)
    if state is None:
        raise ValueError(f"unknown circuit state {circuit!r}")
    calls, error_rate = stats.recent()
    status: HealthStatus
    if state == "open" or stats.probe_ok is False:
        status = "unhealthy"
    elif state == "half-open" or (
        calls >= DEGRADED_MIN_CALLS and error_rate >= DEGRADED_ERROR_RATE
    ):
        status = "degraded"
    else:
        status = "healthy"
    ewma = stats.latency_ewma
    return UpstreamHealth(
        name=ref.name,
        kind=ref.kind,
        labels=dict(ref.labels),
        status=status,
        circuit=state,
        in_flight=stats.in_flight,
        recent_calls=calls,
        error_rate=error_rate,
        latency_ms=None if ewma is None else ewma * 1000.0,
        probe="not_run" if stats.probe_ok is None else "ok" if stats.probe_ok else "failed",
        probe_error=stats.probe_error,
        probe_at=stats.probe_at,
    )


class _HealthCollector(Collector):
    """`ferryman_upstream_healthy{upstream}` and `ferryman_upstream_probes_total{probe_group,
    outcome}`, read at every scrape: an upstream removed by a hot reload loses its series."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        healthy = GaugeMetricFamily(
            "ferryman_upstream_healthy",
            "Upstream health on this replica: 1 healthy, 0.5 degraded, 0 unhealthy.",
            labels=["upstream"],
        )
        probes = CounterMetricFamily(
            "ferryman_upstream_probes",
            "Active health probes, by probe group and outcome (ok, failed).",
            labels=["probe_group", "outcome"],
        )
        return healthy, probes

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        healthy, probes = self._families()
        for entry in self._monitor.entries():
            healthy.add_metric([entry.name], _STATUS_VALUES[entry.status])
        for (group, outcome), count in sorted(self._monitor.probe_counts().items()):
            probes.add_metric([group, outcome], count)
        return healthy, probes


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HealthMonitor:
    """Probes a worker's upstreams and reports their health.

    Args:
        upstreams: the current upstreams (read on every probe and report, so a hot
            reload takes effect without restarting the monitor).
        stats: the passive stats the service records.
        circuits: an upstream name's circuit state (`closed`, `open`, `half-open`).
        publish: sends a report (to the health topic); None only exports metrics.
        service: the reporting service's name.
        instance: this replica's id.
        config_version: the hash of the hot-reloaded configuration being served.
        probe_interval: seconds between probes.
        probe_timeout: seconds a probe may take before it counts as failed.
        report_interval: seconds between published reports.
        clock: the current time (UTC) for `reported_at` and `probe_at`.
        registry: where `ferryman_upstream_healthy{upstream}` and
            `ferryman_upstream_probes_total{probe_group,outcome}` go, if anywhere (both
            read at scrape time, for the current upstreams only).
    """

    def __init__(
        self,
        *,
        upstreams: Callable[[], Sequence[UpstreamRef]],
        stats: StatsBoard,
        circuits: Callable[[str], str],
        publish: Callable[[HealthReport], Awaitable[None]] | None,
        service: str,
        instance: str,
        config_version: Callable[[], str | None],
        probe_interval: float = 30.0,
        probe_timeout: float = 5.0,
        report_interval: float = 15.0,
        clock: Callable[[], datetime] = _utc_now,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._stats = stats
        self._circuits = circuits
        self._publish = publish
        self._service = service
        self._instance = instance
        self._config_version = config_version
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._report_interval = report_interval
        self._clock = clock
        self._probes: dict[tuple[str, str], int] = {}
        if registry is not None:
            registry.register(_HealthCollector(self))

    async def probe_once(self) -> None:
        """Run each probe group's probe once, concurrently, and record each outcome.

        Every upstream of a group gets that group's outcome.
        """
        groups: dict[object, tuple[UpstreamRef, list[str]]] = {}
        for ref in self._upstreams():
            if ref.probe is None:
                continue
            key = ref.group_key if ref.group_key is not None else ref.probe
            groups.setdefault(key, (ref, []))[1].append(ref.name)
        if not groups:
            return
        errors = await asyncio.gather(*(self._probe(ref) for ref, _ in groups.values()))
        at = self._clock()
        for (ref, names), error in zip(groups.values(), errors, strict=True):
            for name in names:
                self._stats.get(name).probed(error=error, at=at)
            key = (ref.probe_group, "ok" if error is None else "failed")
            self._probes[key] = self._probes.get(key, 0) + 1

    async def _probe(self, ref: UpstreamRef) -> str | None:
        """Return why the probe failed, or None when it answered in time."""
        assert ref.probe is not None
        try:
            async with asyncio.timeout(self._probe_timeout):
                await ref.probe()
        except TimeoutError:
            return f"no answer within {self._probe_timeout:g}s"
        except FerrymanError as exc:
            return exc.message[:_MAX_PROBE_ERROR] or exc.code.value
        except Exception as exc:  # an adapter bug; its message may quote anything
            logger.warning("health probe of %s raised %s", ref.probe_group, type(exc).__name__)
            return f"probe raised {type(exc).__name__}"
        return None

    def entries(self) -> list[UpstreamHealth]:
        """Every current upstream's health, sorted by name.

        Raises:
            ValueError: a circuit reported an unknown state.
        """
        return [
            upstream_health(ref, self._stats.get(ref.name), self._circuits(ref.name))
            for ref in sorted(self._upstreams(), key=lambda ref: ref.name)
        ]

    def probe_counts(self) -> dict[tuple[str, str], int]:
        """Probes run so far by `(probe_group, outcome)`, for the current probe groups only."""
        current = {ref.probe_group for ref in self._upstreams() if ref.probe is not None}
        return {key: count for key, count in self._probes.items() if key[0] in current}

    def report(self) -> HealthReport:
        """Every current upstream's health, sorted by name.

        Raises:
            ValueError: a circuit reported an unknown state.
        """
        return HealthReport(
            service=self._service,
            instance=self._instance,
            reported_at=self._clock(),
            config_version=self._config_version(),
            upstreams=self.entries(),
        )

    def snapshot(self) -> dict[str, Any]:
        """The current report's upstreams keyed by name, JSON-ready (for `/health`)."""
        upstreams: list[dict[str, Any]] = self.report().model_dump(mode="json")["upstreams"]
        return {entry["name"]: entry for entry in upstreams}

    async def run(self) -> None:
        """Probe and report forever on independent cadences, starting with one of each now.

        The first report waits for the first probe (at most `probe_timeout`), so it
        carries a probe result. Failures are logged, never raised.
        """
        await self._probe_logged()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._every(self._report_interval, self._report_logged, now=True))
            tasks.create_task(self._every(self._probe_interval, self._probe_logged, now=False))

    @staticmethod
    async def _every(interval: float, action: Callable[[], Awaitable[None]], *, now: bool) -> None:
        loop = asyncio.get_running_loop()
        if not now:
            await asyncio.sleep(interval)
        while True:
            started = loop.time()
            await action()
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def _probe_logged(self) -> None:
        try:
            await self.probe_once()
        except Exception:
            logger.exception("health probe round failed")

    async def _report_logged(self) -> None:
        try:
            report = self.report()
            if self._publish is not None:
                await self._publish(report)
        except Exception as exc:
            logger.warning("health report not published: %s: %s", type(exc).__name__, exc)
