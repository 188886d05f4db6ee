"""The kit's metric families as scraped: names, the `service` label on every sample, no
`_created` series, and `promtool check metrics` on a real `/metrics` answer."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from ferryman_runtime.config_watch import ConfigWatcher
from ferryman_runtime.hosting import create_host_app
from ferryman_runtime.metrics import QuotaMetrics, RequestMetrics
from ferryman_runtime.resilience import Breakers
from ferryman_runtime.sent_messages import REPLY, SentMessages, configured_topics
from ferryman_runtime.service_label import service_registry
from ferryman_runtime.settings import WorkerSettings
from ferryman_runtime.upstreams.health import HealthMonitor, UpstreamRef
from ferryman_runtime.upstreams.stats import StatsBoard, UpstreamStatsCollector
from ferryman_runtime.worker import Worker
from tests.asgi_get import asgi_get

ROOT = Path(__file__).resolve().parents[3]

KIT_FAMILIES = {
    "messaging_client_consumed_messages",
    "messaging_process_duration_seconds",
    "messaging_client_sent_messages",
    "ferryman_messages_in_flight",
    "ferryman_messages_in_flight_limit",
    "ferryman_consumer_paused",
    "ferryman_kafka_consumer_lag_messages",
    "ferryman_kafka_consumer_backlog_messages",
    "ferryman_kafka_consumer_lag_refresh_timestamp_seconds",
    "ferryman_messages_dead_lettered",
    "ferryman_messages_retried",
    "ferryman_messages_exhausted",
    "ferryman_messages_undecodable",
    "ferryman_messages_duplicate_skipped",
    "ferryman_offset_commits",
    "ferryman_requests",
    "ferryman_request_duration_seconds",
    "ferryman_quota_rejections",
    "ferryman_upstream_calls",
    "ferryman_upstream_in_flight",
    "ferryman_upstream_circuit_state",
    "ferryman_upstream_healthy",
    "ferryman_upstream_probes",
    "ferryman_config_info",
    "ferryman_config_reloads",
    "ferryman_config_last_reload_timestamp_seconds",
    "ferryman_worker_ready",
    "ferryman_build_info",
}
"""Every family the kit exports (as the parser names them: counters without `_total`)."""


def _echo_example() -> ModuleType:
    path = ROOT / "docs" / "examples" / "echo_worker.py"
    spec = importlib.util.spec_from_file_location("echo_worker_metrics_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


echo = _echo_example()


class _IdleService:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"ready": True}

    async def wait_failed(self) -> BaseException | None:
        await asyncio.Event().wait()
        return None


async def _scrape(registry: CollectorRegistry, service: str) -> str:
    """GET /metrics from the host app, through its ASGI interface."""
    app = create_host_app(
        _IdleService(), bootstrap_servers="127.0.0.1:1", registry=registry, service_name=service
    )
    return await asgi_get(app, "/metrics")


def _worker(tmp_path: Path) -> tuple[Worker[Any], CollectorRegistry]:
    """A worker (not started) with every kit collector registered and a few samples."""
    registry = CollectorRegistry()
    settings = echo.EchoSettings(
        request_topic="t.echo.requests", default_reply_topic="t.echo.results", group_id="g"
    )
    worker = Worker(
        settings, name="echo_worker", spec=echo.ECHO, service=echo.EchoService(), registry=registry
    )
    board = StatsBoard()
    registry.register(UpstreamStatsCollector(board))
    board.get("backend-a").started()
    board.get("backend-a").finished(failed=True)
    breakers = Breakers(registry, fail_max=1, reset_timeout=30)
    breakers.get("backend-a")
    HealthMonitor(
        upstreams=lambda: [UpstreamRef("backend-a", "storage")],
        stats=board,
        circuits=breakers.state_of,
        publish=None,
        service="echo_worker",
        instance="r1",
        config_version=lambda: None,
        registry=registry,
    )
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    ConfigWatcher(policy, lambda data: data, lambda *_: None, registry=registry, name="policy")
    ConfigWatcher(policy, lambda data: data, lambda *_: None, registry=registry).load_initial()
    RequestMetrics(registry).observe("echo", "direct", "completed", 0.2)
    QuotaMetrics(registry).rejected("tenant", "acme")
    metrics = worker.metrics
    metrics.consumed.labels("t.echo.requests", "g").inc()
    metrics.process_duration.labels("t.echo.requests", "").observe(0.1)
    metrics.dead_letters.labels("decode").inc()
    metrics.handler_retries.labels("t.echo.requests").inc()
    metrics.exhausted.labels("t.echo.requests").inc()
    metrics.undecodable.labels("t.echo.requests").inc()
    metrics.duplicates.inc()
    return worker, registry


async def test_the_scrape_has_every_kit_family_each_sample_labelled_with_the_service(
    tmp_path: Path,
) -> None:
    _, registry = _worker(tmp_path)

    text = await _scrape(registry, "echo_worker")

    families = list(text_string_to_metric_families(text))
    assert {family.name for family in families} >= KIT_FAMILIES
    samples = [sample for family in families for sample in family.samples]
    assert samples
    assert all(sample.labels.get("service") == "echo_worker" for sample in samples)
    assert not [s.name for s in samples if s.name.endswith("_created")]
    assert not [f.name for f in families if f.name.startswith(("echo_worker", "llm_worker"))]


async def test_the_raw_registry_has_no_service_label() -> None:
    registry = CollectorRegistry()
    SentMessages(registry, ["t.results"]).count("t.results", ok=True)

    assert (
        registry.get_sample_value(
            "messaging_client_sent_messages_total",
            {"messaging_destination_name": "t.results", "outcome": "ok"},
        )
        == 1.0
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_accepts_the_scrape(tmp_path: Path) -> None:
    _, registry = _worker(tmp_path)
    text = await _scrape(registry, "echo_worker")

    checked = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # not even a lint warning


def test_configured_topics_are_named_and_producer_reply_topics_become_reply() -> None:
    settings = echo.EchoSettings(request_topic="t.echo.requests", default_reply_topic="t.res")
    registry = CollectorRegistry()
    sent = SentMessages(registry, configured_topics(settings, ["t.catalog"]))

    for topic in ("t.echo.requests.dlq", "t.res", "t.catalog", "acme.results", "x.replies.1"):
        sent.count(topic, ok=True)
    sent.count("evil.results", ok=False)

    def value(destination: str, outcome: str = "ok") -> float | None:
        labels = {"messaging_destination_name": destination, "outcome": outcome}
        return registry.get_sample_value("messaging_client_sent_messages_total", labels)

    assert (value("t.echo.requests.dlq"), value("t.res"), value("t.catalog")) == (1.0, 1.0, 1.0)
    assert value(REPLY) == 2.0
    assert value(REPLY, "failed") == 1.0
    assert value("acme.results") is None


def test_a_sample_with_its_own_service_label_keeps_it() -> None:
    registry = CollectorRegistry()
    Gauge("g", "help", ["service"], registry=registry).labels("other").set(1)

    [family] = service_registry(registry, "echo_worker").collect()

    assert [sample.labels for sample in family.samples] == [{"service": "other"}]


def test_the_tenant_budget_and_lag_interval_settings_are_validated() -> None:
    settings = WorkerSettings()
    assert (settings.metrics_max_tenants, settings.lag_interval) == (50, 10.0)

    with pytest.raises(ValidationError, match="lag_interval"):
        WorkerSettings(lag_interval=0)
    with pytest.raises(ValidationError, match="metrics_max_tenants"):
        WorkerSettings(metrics_max_tenants=-1)
