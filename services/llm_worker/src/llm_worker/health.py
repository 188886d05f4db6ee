"""Deployment health: passive stats and circuit state, plus an active, unbilled probe.

The probe is a model listing (`ChatModel.list_models`), once per provider client,
never a completion: health checks must not cost tokens. A `HealthMonitor` probes
and reports on independent cadences; reports go to the health topic and `/health`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from ferryman.contracts.errors import FerrymanError
from ferryman.contracts.health import DeploymentHealth, HealthReport, HealthStatus
from llm_worker.deployment_stats import DeploymentStats, StatsBoard
from llm_worker.ports import ChatModel

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
"""A recent upstream error rate at or above this marks a deployment degraded."""

_STATUS_VALUES: dict[HealthStatus, float] = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}
_MAX_PROBE_ERROR = 500


def deployment_health(
    name: str, provider: str, model: str, stats: DeploymentStats, circuit: str
) -> DeploymentHealth:
    """Judge one deployment from this replica's stats and its circuit state.

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
    ewma = stats.first_token_ewma
    return DeploymentHealth(
        deployment=name,
        provider=provider,
        model=model,
        status=status,
        circuit=state,
        in_flight=stats.in_flight,
        recent_calls=calls,
        error_rate=error_rate,
        first_token_ms=None if ewma is None else ewma * 1000.0,
        probe="not_run" if stats.probe_ok is None else "ok" if stats.probe_ok else "failed",
        probe_error=stats.probe_error,
        probe_at=stats.probe_at,
    )


@dataclass(frozen=True)
class DeploymentRef:
    """A configured deployment and the provider client that serves it."""

    name: str
    provider: str
    model: str
    client: ChatModel


class _HealthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.healthy = Gauge(
            "llm_worker_deployment_healthy",
            "Deployment health on this replica: 1 healthy, 0.5 degraded, 0 unhealthy.",
            ["deployment"],
            registry=registry,
        )
        self.probes = Counter(
            "llm_worker_health_probes_total",
            "Active health probes (model listings) by provider and outcome (ok, failed).",
            ["provider", "outcome"],
            registry=registry,
        )
        self.exported: set[str] = set()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HealthMonitor:
    """Probes the configured deployments and reports their health.

    Args:
        deployments: the current deployments (read on every probe and report, so
            a hot reload takes effect without restarting the monitor).
        stats: the passive stats the service records.
        circuits: a deployment name's circuit state (`closed`, `open`, `half-open`).
        publish: sends a report (to the health topic); None only exports metrics.
        service: the reporting service's name.
        instance: this replica's id.
        routing_version: the hash of the routing configuration being served.
        probe_interval: seconds between probes.
        probe_timeout: seconds a probe may take before it counts as failed.
        report_interval: seconds between published reports.
        clock: the current time (UTC) for `reported_at` and `probe_at`.
        registry: where the health gauge and probe counter go, if anywhere.
    """

    def __init__(
        self,
        *,
        deployments: Callable[[], Sequence[DeploymentRef]],
        stats: StatsBoard,
        circuits: Callable[[str], str],
        publish: Callable[[HealthReport], Awaitable[None]] | None,
        service: str,
        instance: str,
        routing_version: Callable[[], str | None],
        probe_interval: float = 30.0,
        probe_timeout: float = 5.0,
        report_interval: float = 15.0,
        clock: Callable[[], datetime] = _utc_now,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._deployments = deployments
        self._stats = stats
        self._circuits = circuits
        self._publish = publish
        self._service = service
        self._instance = instance
        self._routing_version = routing_version
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._report_interval = report_interval
        self._clock = clock
        self._metrics = None if registry is None else _HealthMetrics(registry)

    async def probe_once(self) -> None:
        """List models once per distinct client, concurrently, and record each outcome.

        Every deployment served by a client gets that client's outcome.
        """
        groups: dict[int, tuple[ChatModel, list[str]]] = {}
        for ref in self._deployments():
            groups.setdefault(id(ref.client), (ref.client, []))[1].append(ref.name)
        if not groups:
            return
        errors = await asyncio.gather(*(self._probe(client) for client, _ in groups.values()))
        at = self._clock()
        for (client, names), error in zip(groups.values(), errors, strict=True):
            for name in names:
                self._stats.get(name).probed(error=error, at=at)
            if self._metrics is not None:
                outcome = "ok" if error is None else "failed"
                self._metrics.probes.labels(provider=client.provider, outcome=outcome).inc()

    async def _probe(self, client: ChatModel) -> str | None:
        """Return why the listing failed, or None when it answered in time."""
        try:
            async with asyncio.timeout(self._probe_timeout):
                await client.list_models()
        except TimeoutError:
            return f"no answer within {self._probe_timeout:g}s"
        except FerrymanError as exc:
            return exc.message[:_MAX_PROBE_ERROR] or exc.code.value
        except Exception as exc:  # an adapter bug; its message may quote anything
            logger.warning("health probe of %s raised %s", client.provider, type(exc).__name__)
            return f"probe raised {type(exc).__name__}"
        return None

    def report(self) -> HealthReport:
        """Every current deployment's health, sorted by name (also updates the gauge).

        Raises:
            ValueError: a circuit reported an unknown state.
        """
        entries = [
            deployment_health(
                ref.name,
                ref.provider,
                ref.model,
                self._stats.get(ref.name),
                self._circuits(ref.name),
            )
            for ref in sorted(self._deployments(), key=lambda ref: ref.name)
        ]
        if self._metrics is not None:
            self._export(self._metrics, entries)
        return HealthReport(
            service=self._service,
            instance=self._instance,
            reported_at=self._clock(),
            routing_version=self._routing_version(),
            deployments=entries,
        )

    @staticmethod
    def _export(metrics: _HealthMetrics, entries: list[DeploymentHealth]) -> None:
        current = {entry.deployment for entry in entries}
        for gone in metrics.exported - current:  # removed by a hot reload
            metrics.healthy.remove(gone)
        for entry in entries:
            metrics.healthy.labels(deployment=entry.deployment).set(_STATUS_VALUES[entry.status])
        metrics.exported = current

    def snapshot(self) -> dict[str, Any]:
        """The current report's deployments keyed by name, JSON-ready (for `/health`)."""
        deployments: list[dict[str, Any]] = self.report().model_dump(mode="json")["deployments"]
        return {entry["deployment"]: entry for entry in deployments}

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
