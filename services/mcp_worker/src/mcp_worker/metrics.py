"""The mcp_worker's Prometheus metrics. Labels are configured server names, request kinds
and outcomes: never a tool argument, a tenant-supplied string or a request id."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_worker.execution.audit import Auditor
from mcp_worker.execution.cache import ResultCache
from mcp_worker.servers.fleet import Fleet

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class McpMetrics:
    """Requests by server, kind and outcome; their durations; tool definition changes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mcp_worker_requests_total",
            "MCP requests by server, kind (tool, resource, prompt) and outcome.",
            ["server", "kind", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "mcp_worker_request_duration_seconds",
            "Time from start to terminal reply of MCP requests, by server and kind.",
            ["server", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tool_changes = Counter(
            "mcp_worker_tool_definition_changes_total",
            "Tool definitions that changed hash, by server and resulting state.",
            ["server", "state"],
            registry=registry,
        )
        self.api_changes = Counter(
            "mcp_worker_api_document_changes_total",
            "API documents that changed (reload or edited file), by server and whether the"
            " change was breaking.",
            ["server", "breaking"],
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "mcp_worker_rate_limit_waits_total",
            "Tool calls that waited for a slot of a configured rate limit, by server.",
            ["server"],
            registry=registry,
        )


class FleetCollector(Collector):
    """Server state read at scrape time: sessions, restarts, result cache, audit records."""

    def __init__(
        self,
        fleet: Fleet,
        cache: ResultCache,
        auditor: Auditor,
    ) -> None:
        self._fleet = fleet
        self._cache = cache
        self._auditor = auditor

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        sessions = GaugeMetricFamily(
            "mcp_worker_server_sessions",
            "Live MCP sessions per server (stdio: running server processes).",
            labels=["server"],
        )
        restarts = CounterMetricFamily(
            "mcp_worker_server_restarts",
            "Sessions that ended unexpectedly (a crashed or exited server), per server.",
            labels=["server"],
        )
        up = GaugeMetricFamily(
            "mcp_worker_server_up",
            "1 when the server's last start or call succeeded, else 0.",
            labels=["server"],
        )
        invalid = CounterMetricFamily(
            "mcp_worker_api_invalid_responses",
            "API responses that did not match the API's document, per server (counts from"
            " zero again when the API's entry or document changes).",
            labels=["server"],
        )
        for name, supervisor in sorted(self._fleet.supervisors.items()):
            sessions.add_metric([name], supervisor.session_count)
            backend = self._fleet.api_backend(name)
            if backend is not None:
                invalid.add_metric([name], backend.invalid_responses)
            restarts.add_metric([name], supervisor.restarts)
            up.add_metric([name], 0 if supervisor.failures_in_a_row else 1)
        cache = CounterMetricFamily(
            "mcp_worker_cache_lookups", "Result cache lookups by outcome.", labels=["outcome"]
        )
        cache.add_metric(["hit"], self._cache.hits)
        cache.add_metric(["miss"], self._cache.misses)
        entries = GaugeMetricFamily("mcp_worker_cache_entries", "Results held in the cache.")
        entries.add_metric([], len(self._cache))
        yield from (sessions, restarts, up, invalid, cache, entries)
        audit = CounterMetricFamily(
            "mcp_worker_audit_records",
            "Audit records by outcome (published, or failed: lost).",
            labels=["outcome"],
        )
        audit.add_metric(["published"], self._auditor.published)
        audit.add_metric(["failed"], self._auditor.failed)
        yield audit
