"""Prometheus collectors of the shared runtime, registered on an injected registry.

Labels stay low-cardinality: topics and reasons, never request ids.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
)  # fmt: skip


class ConsumerMetrics:
    """Counters and gauges of the parallel consumer and the dead-letter path.

    OTel messaging families keep their semconv names (`messaging_*`, labels
    `messaging_destination_name`, `messaging_consumer_group_name`, `error_type`); the
    kit's own are `ferryman_*`. No label names a worker: hosting adds `service` at scrape
    time.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(
            "messaging_client_consumed_messages",
            "Records fetched from request topics and handed to the handler.",
            ["messaging_destination_name", "messaging_consumer_group_name"],
            registry=registry,
        )
        self.process_duration = Histogram(
            "messaging_process_duration_seconds",
            "Seconds from a record's dispatch to its settlement (done, dead-lettered or"
            " handed over); error_type is empty when the handler succeeded.",
            ["messaging_destination_name", "error_type"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "ferryman_messages_in_flight", "Records being processed now.", registry=registry
        )
        self.in_flight_limit = Gauge(
            "ferryman_messages_in_flight_limit",
            "Most records processed at once (max_in_flight); fetching pauses at the limit.",
            registry=registry,
        )
        self.paused = Gauge(
            "ferryman_consumer_paused",
            "1 while fetching is paused because the in-flight limit is reached.",
            registry=registry,
        )
        self.handler_retries = Counter(
            "ferryman_messages_retried",
            "Handler attempts that raised and will be retried (the offset stays uncommitted).",
            ["messaging_destination_name"],
            registry=registry,
        )
        self.exhausted = Counter(
            "ferryman_messages_exhausted",
            "Records whose handler failed its last allowed attempt (handed to on_exhausted).",
            ["messaging_destination_name"],
            registry=registry,
        )
        self.undecodable = Counter(
            "ferryman_messages_undecodable",
            "Records the Kafka client could not decode (handed to on_undecodable).",
            ["messaging_destination_name"],
            registry=registry,
        )
        self.commits = Counter(
            "ferryman_offset_commits",
            "Offset commits by outcome (ok, failed: retried soon).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "failed"):
            self.commits.labels(outcome=outcome)
        self.dead_letters = Counter(
            "ferryman_messages_dead_lettered",
            "Records parked in a dead-letter topic, by reason (decode, validation, handler).",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "ferryman_messages_duplicate_skipped",
            "Requests not executed because the same (source, id) was in flight or done recently.",
            registry=registry,
        )


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


class WorkerStatusMetrics:
    """`ferryman_worker_ready` (the `/health` ready bit, read at scrape time) and
    `ferryman_build_info{version}` (always 1).

    Args:
        registry: where they go.
        ready: whether the worker is consuming (`Worker.ready`).
        version: the running build's version.
    """

    def __init__(
        self, registry: CollectorRegistry, *, ready: Callable[[], bool], version: str
    ) -> None:
        self.ready = Gauge(
            "ferryman_worker_ready",
            "1 while the worker is running, in its consumer group and its loops alive.",
            registry=registry,
        )
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)
        self.build_info = Gauge(
            "ferryman_build_info",
            "1, labelled with the running version.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(version=version).set(1)
