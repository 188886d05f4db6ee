"""The mcp_worker's Prometheus metrics. Labels are configured server names, request kinds,
outcomes and budgeted tenants: never a tool name or argument, a user or a request id."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.metrics import QuotaMetrics, RequestMetrics
from mcp_worker.execution.audit import Auditor
from mcp_worker.execution.cache import ResultCache
from mcp_worker.servers.fleet import Fleet


class McpMetrics:
    """The mcp_worker's families: requests and their durations (the kit's
    `ferryman_requests_total`, by operation, server and outcome), refusals by its own rate
    limits (`ferryman_quota_rejections_total`), tool definition and API document changes,
    and rate-limit waits.

    Args:
        registry: where the families are registered.
        tenants: maps a tenant to its label value (configured tenants, then the first few
            others, then `other`).
    """

    def __init__(self, registry: CollectorRegistry, tenants: LabelBudget | None = None) -> None:
        self.requests = RequestMetrics(registry)
        self.quotas = QuotaMetrics(registry)
        self.tenants = tenants or LabelBudget(max_dynamic=50)
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

    def quota_refused(self, scope: str, tenant: str | None) -> None:
        """Count a request failed `rate_limited` by a rate limit of the registry (`scope`:
        `server` for a server's limit, `tenant` for a tenant's limit on it)."""
        self.quotas.rejected(scope, self.tenants(tenant))


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
