"""The storage_worker's Prometheus metrics.

Requests (`ferryman_requests_total`, by operation, backend and outcome), tenant quota
refusals (`ferryman_quota_rejections_total`) and backend calls (`ferryman_upstream_*`) are
the kit's families; bytes moved, object sizes, pipeline steps and object events are the
worker's own. Labels are configured backend names, operations, step kinds, outcomes and
budgeted tenants: never a key, a tenant's folder or a request id. The `service` label is
added at scrape time by the kit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.metrics import QuotaMetrics, RequestMetrics
from storage_worker.events import ObjectEvents

SIZE_BUCKETS: tuple[float, ...] = (*(1024.0 * 4**i for i in range(11)), 5.0 * 1024**3)
"""1 KiB, 4 KiB, … 4 GiB (×4), then 5 GiB (the largest single S3 upload)."""

Direction = Literal["read", "write"]


class StorageMetrics:
    """The storage_worker's families (see the module's docstring).

    Args:
        registry: where the families are registered.
        tenants: maps a tenant to its label value (configured tenants, then the first few
            others, then `other`).
    """

    def __init__(self, registry: CollectorRegistry, tenants: LabelBudget | None = None) -> None:
        self.requests = RequestMetrics(registry)
        self.quotas = QuotaMetrics(registry)
        self.tenants = tenants or LabelBudget(max_dynamic=50)
        self.transferred = Counter(
            "storage_worker_transferred_bytes_total",
            "Object bytes read from or written to a backend by this worker, by backend and"
            " direction (read, write); presigned URLs move bytes without the worker.",
            ["backend", "direction"],
            registry=registry,
        )
        self.object_size = Histogram(
            "storage_worker_object_size_bytes",
            "Sizes of the objects written (put, copy) or read (get), by backend and operation.",
            ["backend", "operation"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.pipeline_steps = Counter(
            "storage_worker_pipeline_steps_total",
            "Pipeline steps run, by step kind and outcome (completed, reused, or the error"
            " code of a failed step).",
            ["step", "outcome"],
            registry=registry,
        )

    def moved(self, backend: str, direction: Direction, size: int) -> None:
        """Count `size` bytes read from or written to `backend`."""
        self.transferred.labels(backend, direction).inc(size)

    def sized(self, backend: str, operation: str, size: int) -> None:
        """Observe the size of an object `operation` wrote or read."""
        self.object_size.labels(backend, operation).observe(size)

    def step(self, kind: str, outcome: str) -> None:
        """Count one pipeline step of `kind` and how it ended."""
        self.pipeline_steps.labels(kind, outcome).inc()

    def quota_refused(self, tenant: str) -> None:
        """Count a request failed `rate_limited` by its tenant's quota."""
        self.quotas.rejected("tenant", self.tenants(tenant))


class EventsCollector(Collector):
    """`storage_worker_events_published_total{outcome}` (published, failed), read from the
    object events' counts at scrape time."""

    def __init__(self, events: ObjectEvents) -> None:
        self._events = events

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        family.add_metric(["published"], self._events.published)
        family.add_metric(["failed"], self._events.failed)
        return [family]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "storage_worker_events_published",
            "Object events by outcome: published, or failed (the request runs again).",
            labels=["outcome"],
        )
