"""Prometheus collectors of the shared runtime, registered on an injected registry.

Labels stay low-cardinality: topics and reasons, never request ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    """Counters and gauges of the parallel consumer and the dead-letter path."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.records = Counter(
            f"{prefix}_records_consumed_total",
            "Records fetched from request topics.",
            ["topic"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_records_in_flight", "Records being processed now.", registry=registry
        )
        self.paused = Gauge(
            f"{prefix}_consumer_paused",
            "1 while fetching is paused because the in-flight limit is reached.",
            registry=registry,
        )
        self.handler_retries = Counter(
            f"{prefix}_handler_retries_total",
            "Handler attempts that raised and will be retried (the offset stays uncommitted).",
            ["topic"],
            registry=registry,
        )
        self.exhausted = Counter(
            f"{prefix}_records_exhausted_total",
            "Records whose handler failed its last allowed attempt (handed to on_exhausted).",
            ["topic"],
            registry=registry,
        )
        self.undecodable = Counter(
            f"{prefix}_records_undecodable_total",
            "Records the Kafka client could not decode (handed to on_undecodable).",
            ["topic"],
            registry=registry,
        )
        self.commits = Counter(
            f"{prefix}_offset_commits_total", "Successful offset commits.", registry=registry
        )
        self.dead_letters = Counter(
            f"{prefix}_dead_letters_total",
            "Records parked in a dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            f"{prefix}_duplicates_skipped_total",
            "Requests not executed because the same (source, id) was in flight or done recently.",
            registry=registry,
        )


REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
)  # fmt: skip


class RequestMetrics:
    """`ferryman_requests_total` and `ferryman_request_duration_seconds`: one observation per
    finished request, in every worker (the `service` label is added at scrape time).

    Labels: `operation` (`chat`, `tool`, `put`, …), `target` (a route alias or `direct`, an
    MCP server, a storage backend: bounded by config) and `outcome` (`completed`,
    `cancelled` or an error code).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ferryman_requests_total",
            "Requests finished, by operation, target and outcome.",
            ["operation", "target", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "ferryman_request_duration_seconds",
            "Seconds from a request's start to its terminal event.",
            ["operation", "target", "outcome"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )

    def observe(self, operation: str, target: str, outcome: str, seconds: float) -> None:
        """Count one finished request and its duration."""
        self.requests.labels(operation, target, outcome).inc()
        self.duration.labels(operation, target, outcome).observe(max(0.0, seconds))


class QuotaMetrics:
    """`ferryman_quota_rejections_total`: requests failed `rate_limited` by a quota of
    Ferryman's own (not by a provider).

    Labels: `scope` (`tenant`, `deployment`, `backend`, …) and `tenant` (through the
    worker's tenant `LabelBudget`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejections = Counter(
            "ferryman_quota_rejections_total",
            "Requests refused because one of the worker's own quotas had no budget in time.",
            ["scope", "tenant"],
            registry=registry,
        )

    def rejected(self, scope: str, tenant: str) -> None:
        """Count one rejection (`tenant` already mapped through the label budget)."""
        self.rejections.labels(scope, tenant).inc()
