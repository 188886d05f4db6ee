"""Prometheus collectors of the shared runtime, registered on an injected registry.

Labels stay low-cardinality: topics and reasons, never request ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
