"""Upstream health: passive stats and circuit state, plus an active, cheap probe.

The probe is whatever the worker passes in (the LLM worker lists models, never a
completion: health checks must not cost tokens), run once per probe group (one client
serving several deployments is probed once). A `HealthMonitor` probes and reports on
independent cadences; reports go to the health topic and `/health`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

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


class _HealthMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str, noun: str, group: str) -> None:
        self.healthy = Gauge(
            f"{prefix}_{noun}_healthy",
            f"{noun.capitalize()} health on this replica: 1 healthy, 0.5 degraded, 0 unhealthy.",
            [noun],
            registry=registry,
        )
        self.probes = Counter(
            f"{prefix}_health_probes_total",
            f"Active health probes by {group} and outcome (ok, failed).",
            [group, "outcome"],
            registry=registry,
        )
        self.noun = noun
        self.group = group
        self.exported: set[str] = set()


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
        registry: where the health gauge and probe counter go, if anywhere.
        metric_prefix: the service's metric prefix (`llm_worker`).
        metric_noun: what the gauge calls an upstream (`deployment` →
            `<prefix>_deployment_healthy{deployment=…}`).
        probe_label: the probe counter's label for the probe group (`provider`).
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
        metric_prefix: str = "ferryman",
        metric_noun: str = "upstream",
        probe_label: str = "group",
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
        self._metrics = (
            None
            if registry is None
            else _HealthMetrics(registry, metric_prefix, metric_noun, probe_label)
        )

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
            if self._metrics is not None:
                outcome = "ok" if error is None else "failed"
                labels = {self._metrics.group: ref.probe_group, "outcome": outcome}
                self._metrics.probes.labels(**labels).inc()

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

    def report(self) -> HealthReport:
        """Every current upstream's health, sorted by name (also updates the gauge).

        Raises:
            ValueError: a circuit reported an unknown state.
        """
        entries = [
            upstream_health(ref, self._stats.get(ref.name), self._circuits(ref.name))
            for ref in sorted(self._upstreams(), key=lambda ref: ref.name)
        ]
        if self._metrics is not None:
            self._export(self._metrics, entries)
        return HealthReport(
            service=self._service,
            instance=self._instance,
            reported_at=self._clock(),
            config_version=self._config_version(),
            upstreams=entries,
        )

    @staticmethod
    def _export(metrics: _HealthMetrics, entries: list[UpstreamHealth]) -> None:
        current = {entry.name for entry in entries}
        for gone in metrics.exported - current:  # removed by a hot reload
            metrics.healthy.remove(gone)
        for entry in entries:
            metrics.healthy.labels(entry.name).set(_STATUS_VALUES[entry.status])
        metrics.exported = current

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
