"""Deployment health: status rules, unbilled probes once per client, reports on a cadence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.codec import decode_event
from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.events import HEALTH_REPORTED
from ferryman.contracts.health import HealthReport
from ferryman_runtime.health_events import publish_health
from ferryman_runtime.resilience import Breakers
from ferryman_runtime.upstreams.health import HealthMonitor, UpstreamRef, upstream_health
from ferryman_runtime.upstreams.stats import StatsBoard, UpstreamStats, UpstreamStatsCollector
from llm_worker.chat.streaming import Completion, StreamEvent

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds that only move when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListingModel:
    """Answers `list_models` with `models`, raises `error`, or hangs until `release` is set.

    Completions are counted and fail the test: a health probe must never bill tokens.
    """

    def __init__(
        self,
        provider: str = "fake",
        *,
        error: Exception | None = None,
        hang: bool = False,
    ) -> None:
        self.provider = provider
        self.listings = 0
        self.completions = 0
        self.release = asyncio.Event()
        self._error = error
        self._hang = hang

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        self.completions += 1
        raise AssertionError("a health probe called stream()")
        yield  # pragma: no cover - makes this an async generator

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        self.completions += 1
        raise AssertionError("a health probe called generate()")

    async def list_models(self) -> list[str]:
        self.listings += 1
        if self._hang:
            await self.release.wait()
        if self._error is not None:
            raise self._error
        return ["m1", "m2"]

    async def aclose(self) -> None:
        return None


def _stats(
    *, calls: int = 0, failures: int = 0, probed: bool = False, probe_error: str | None = None
) -> UpstreamStats:
    """Stats with `calls` recent calls (`failures` of them failed) and maybe one probe."""
    stats = UpstreamStats(clock=FakeClock())
    for index in range(calls):
        stats.started()
        stats.finished(failed=index < failures)
    if probed:
        stats.probed(error=probe_error, at=NOW)
    return stats


def _ref(name: str, provider: str, model: str) -> UpstreamRef:
    return UpstreamRef(name, "llm", {"provider": provider, "model": model})


def _monitor(
    refs: list[UpstreamRef],
    *,
    circuits: dict[str, str] | None = None,
    publish: Any = None,
    registry: CollectorRegistry | None = None,
    **intervals: float,
) -> tuple[HealthMonitor, StatsBoard]:
    board = StatsBoard(clock=FakeClock())
    states = circuits or {}
    monitor = HealthMonitor(
        upstreams=lambda: refs,
        stats=board,
        circuits=lambda name: states.get(name, "closed"),
        publish=publish,
        service="llm-worker",
        instance="replica-1",
        config_version=lambda: "v-abc",
        clock=lambda: NOW,
        registry=registry,
        **intervals,
    )
    return monitor, board


def _refs(client: ListingModel, *names: str) -> list[UpstreamRef]:
    return [
        UpstreamRef(
            name,
            "llm",
            {"provider": client.provider, "model": f"model-{name}"},
            client.list_models,
            client.provider,
            id(client),
        )
        for name in names
    ]


def test_a_quiet_deployment_with_a_closed_circuit_is_healthy_and_reports_its_numbers() -> None:
    stats = _stats(calls=2, probed=True)
    stats.started()
    stats.finished(failed=False, latency=0.25)

    health = upstream_health(_ref("d", "openai", "gpt"), stats, "closed")

    assert health.status == "healthy"
    assert (health.recent_calls, health.error_rate, health.in_flight) == (3, 0.0, 0)
    assert health.latency_ms == pytest.approx(250.0)
    assert (health.probe, health.probe_error, health.probe_at) == ("ok", None, NOW)


def test_an_open_circuit_makes_a_deployment_unhealthy() -> None:
    health = upstream_health(_ref("d", "openai", "gpt"), _stats(probed=True), "open")

    assert (health.status, health.circuit) == ("unhealthy", "open")


def test_a_failed_last_probe_makes_a_deployment_unhealthy_even_with_a_closed_circuit() -> None:
    health = upstream_health(
        _ref("d", "openai", "gpt"), _stats(probed=True, probe_error="auth failed"), "closed"
    )

    assert (health.status, health.probe, health.probe_error) == (
        "unhealthy",
        "failed",
        "auth failed",
    )


def test_a_half_open_circuit_makes_a_deployment_degraded() -> None:
    health = upstream_health(_ref("d", "openai", "gpt"), _stats(), "half-open")

    assert (health.status, health.probe) == ("degraded", "not_run")


@pytest.mark.parametrize(
    ("calls", "failures", "status"),
    [
        (5, 1, "degraded"),  # 20% of the minimum sample
        (10, 1, "healthy"),  # 10%
        (4, 4, "healthy"),  # too few calls to judge
    ],
)
def test_a_high_recent_error_rate_over_enough_calls_makes_a_deployment_degraded(
    calls: int, failures: int, status: str
) -> None:
    health = upstream_health(_ref("d", "p", "m"), _stats(calls=calls, failures=failures), "closed")

    assert health.status == status


def test_an_unknown_circuit_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown circuit state"):
        upstream_health(_ref("d", "p", "m"), _stats(), "ajar")


async def test_deployments_sharing_a_client_are_probed_with_one_listing_call() -> None:
    shared, alone = ListingModel("openai"), ListingModel("anthropic")
    monitor, board = _monitor([*_refs(shared, "a", "b", "c"), *_refs(alone, "d")])

    await monitor.probe_once()

    assert (shared.listings, alone.listings) == (1, 1)
    for name in "abcd":
        assert (board.get(name).probe_ok, board.get(name).probe_at) == (True, NOW)
    assert shared.completions == alone.completions == 0


async def test_a_failing_probe_marks_every_deployment_of_its_client_unhealthy() -> None:
    broken = ListingModel(error=FerrymanError(ErrorCode.AUTH, "invalid API key", upstream="fake"))
    fine = ListingModel("other")
    monitor, _ = _monitor([*_refs(broken, "a", "b"), *_refs(fine, "c")])

    await monitor.probe_once()
    report = monitor.report()

    by_name = {u.name: u for u in report.upstreams}
    for name in ("a", "b"):
        assert (by_name[name].status, by_name[name].probe_error) == (
            "unhealthy",
            "invalid API key",
        )
    assert by_name["c"].status == "healthy"


async def test_a_probe_that_does_not_answer_in_time_is_recorded_as_failed() -> None:
    hanging = ListingModel(hang=True)
    monitor, board = _monitor(_refs(hanging, "a"), probe_timeout=0.05)

    await asyncio.wait_for(monitor.probe_once(), timeout=5)

    assert (board.get("a").probe_ok, board.get("a").probe_error) == (
        False,
        "no answer within 0.05s",
    )


async def test_an_unexpected_probe_exception_is_reported_by_type_name_only() -> None:
    buggy = ListingModel(error=KeyError("sk-secret-in-a-message"))
    monitor, board = _monitor(_refs(buggy, "a"))

    await monitor.probe_once()

    assert board.get("a").probe_error == "probe raised KeyError"


async def test_the_report_lists_deployments_by_name_and_exports_low_cardinality_metrics() -> None:
    registry = CollectorRegistry()
    client = ListingModel("openai")
    refs = _refs(client, "zeta", "alpha", "mid")
    monitor, _ = _monitor(refs, circuits={"mid": "half-open", "zeta": "open"}, registry=registry)
    await monitor.probe_once()

    report = monitor.report()

    assert (report.service, report.instance, report.config_version, report.reported_at) == (
        "llm-worker",
        "replica-1",
        "v-abc",
        NOW,
    )
    assert [u.name for u in report.upstreams] == ["alpha", "mid", "zeta"]
    gauge = "ferryman_upstream_healthy"
    values = {
        n: registry.get_sample_value(gauge, {"upstream": n}) for n in ("alpha", "mid", "zeta")
    }
    assert values == {"alpha": 1.0, "mid": 0.5, "zeta": 0.0}
    probes = {"probe_group": "openai", "outcome": "ok"}
    assert registry.get_sample_value("ferryman_upstream_probes_total", probes) == 1.0

    del refs[0]  # a hot reload removed "zeta"

    assert registry.get_sample_value(gauge, {"upstream": "zeta"}) is None
    assert registry.get_sample_value("ferryman_upstream_probes_total", probes) == 1.0


async def test_a_probe_group_removed_by_a_reload_loses_its_probe_series() -> None:
    registry = CollectorRegistry()
    refs = _refs(ListingModel("openai", error=OSError("down")), "a") + _refs(
        ListingModel("anthropic"), "b"
    )
    monitor, _ = _monitor(refs, registry=registry)
    await monitor.probe_once()
    await monitor.probe_once()
    failed = {"probe_group": "openai", "outcome": "failed"}
    assert registry.get_sample_value("ferryman_upstream_probes_total", failed) == 2.0

    del refs[0]  # a hot reload removed the only openai deployment

    assert registry.get_sample_value("ferryman_upstream_probes_total", failed) is None
    kept = {"probe_group": "anthropic", "outcome": "ok"}
    assert registry.get_sample_value("ferryman_upstream_probes_total", kept) == 2.0


async def test_the_snapshot_is_json_ready_and_keyed_by_deployment() -> None:
    monitor, _ = _monitor(_refs(ListingModel(), "b", "a"))
    await monitor.probe_once()

    snapshot = monitor.snapshot()

    assert list(snapshot) == ["a", "b"]
    assert snapshot["a"]["probe_at"] == "2030-01-02T03:04:05Z"
    json.dumps(snapshot)


async def test_run_probes_then_publishes_and_keeps_publishing_after_a_publish_failure() -> None:
    client = ListingModel()
    reports: list[HealthReport] = []
    second = asyncio.Event()

    async def publish(report: HealthReport) -> None:
        reports.append(report)
        if len(reports) == 1:
            raise OSError("broker down")
        second.set()

    monitor, _ = _monitor(_refs(client, "a"), publish=publish, report_interval=0.01)
    task = asyncio.create_task(monitor.run())
    try:
        await asyncio.wait_for(second.wait(), timeout=5)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert reports[0].upstreams[0].probe == "ok"  # the first report follows the first probe
    assert len(reports) >= 2
    assert client.completions == 0


async def test_publish_health_sends_a_binary_cloudevent_keyed_by_instance_and_waits() -> None:
    sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    class RecordingPublisher:
        async def send(
            self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
        ) -> asyncio.Future[None]:
            sent.append((topic, key, value, list(headers)))
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            acked.set_result(None)
            return acked

    monitor, _ = _monitor(_refs(ListingModel(), "a"))
    report = monitor.report()

    await publish_health(
        RecordingPublisher(),  # type: ignore[arg-type]
        "ferryman.health",
        report,
        source="/ferryman/llm-worker",
    )

    [(topic, key, value, headers)] = sent
    assert (topic, key) == ("ferryman.health", b"replica-1")
    assert ("ce_type", b"ferryman.health.reported") in headers
    assert ("content-type", b"application/json") in headers
    event = decode_event(headers, value)
    assert (event.type, event.source, event.mode) == (
        HEALTH_REPORTED,
        "/ferryman/llm-worker",
        "binary",
    )
    assert HealthReport.model_validate_json(value or b"") == report


async def test_upstreams_without_a_probe_are_reported_under_the_default_metric_names() -> None:
    registry = CollectorRegistry()
    board = StatsBoard(clock=FakeClock())
    monitor = HealthMonitor(
        upstreams=lambda: [UpstreamRef("bucket-a", "storage", {"backend": "s3"})],
        stats=board,
        circuits=lambda _: "closed",
        publish=None,
        service="storage_worker",
        instance="r1",
        config_version=lambda: None,
        clock=lambda: NOW,
        registry=registry,
    )

    await monitor.probe_once()
    [entry] = monitor.report().upstreams

    assert (entry.kind, entry.labels, entry.probe) == ("storage", {"backend": "s3"}, "not_run")
    assert registry.get_sample_value("ferryman_upstream_healthy", {"upstream": "bucket-a"}) == 1.0


def test_upstream_calls_and_in_flight_are_read_from_the_stats_board_at_scrape_time() -> None:
    registry = CollectorRegistry()
    board = StatsBoard(clock=FakeClock())
    registry.register(UpstreamStatsCollector(board))
    stats = board.get("gpt")
    for failed, rejected in [(False, False), (True, False), (False, True), (False, False)]:
        stats.started()
        stats.finished(failed=failed, rejected=rejected)
    stats.started()

    def calls(outcome: str) -> float | None:
        labels = {"upstream": "gpt", "outcome": outcome}
        return registry.get_sample_value("ferryman_upstream_calls_total", labels)

    assert (calls("ok"), calls("failed"), calls("rejected")) == (2.0, 1.0, 1.0)
    assert registry.get_sample_value("ferryman_upstream_in_flight", {"upstream": "gpt"}) == 1.0
    assert stats.recent() == (4, 0.25)  # a rejected call does not count against the upstream


async def test_the_circuit_gauge_is_unprefixed_and_shows_an_open_circuit() -> None:
    registry = CollectorRegistry()
    breakers = Breakers(registry, fail_max=1, reset_timeout=600)
    with pytest.raises(FerrymanError):
        async with breakers.get("gpt").guard():
            raise FerrymanError(ErrorCode.UNAVAILABLE, "503", retryable=True)

    assert registry.get_sample_value("ferryman_upstream_circuit_state", {"upstream": "gpt"}) == 2.0
