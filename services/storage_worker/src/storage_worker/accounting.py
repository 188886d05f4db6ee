"""What every finished storage request leaves behind: its count and duration
(`ferryman_requests_total`, by operation, backend and outcome) and its usage event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from ferryman.contracts import FerrymanError
from ferryman.contracts.storage import (
    CopyRequest,
    DeleteRequest,
    GetRequest,
    HeadRequest,
    ListRequest,
    MetadataUpdateRequest,
    PresignRequest,
    ProcessRequest,
    PutRequest,
)
from ferryman.contracts.usage import UsageEvent
from ferryman_runtime.job import Job
from storage_worker.metrics import StorageMetrics
from storage_worker.policy import Policy, space_of, tenant_name

OPERATIONS: dict[type[BaseModel], str] = {
    PutRequest: "put",
    GetRequest: "get",
    HeadRequest: "head",
    ListRequest: "list",
    DeleteRequest: "delete",
    CopyRequest: "copy",
    PresignRequest: "presign",
    MetadataUpdateRequest: "metadata",
    ProcessRequest: "process",
}
"""The `operation` of each request kind."""

UNKNOWN_TARGET = "unknown"
"""The `target` label of a request whose backend could not be resolved."""


class RequestAccounting:
    """Counts finished requests and records their usage.

    Args:
        metrics: where the request counts and durations go.
        record_usage: takes one usage event per finished request (`UsageRecorder.record`).
        policy: the active policy (which backends a target may name).
    """

    def __init__(
        self,
        metrics: StorageMetrics,
        record_usage: Callable[[UsageEvent], None],
        policy: Callable[[], Policy],
    ) -> None:
        self._metrics = metrics
        self._record_usage = record_usage
        self._policy = policy

    def finished(self, job: Job[Any], outcome: str, seconds: float, moved: int) -> None:
        """Count the request (`outcome`: `completed` or its error code) and record its
        usage (`moved`: object bytes it read and wrote through the worker)."""
        operation = OPERATIONS.get(type(job.request), "unknown")
        target = self.target(job)
        self._metrics.requests.observe(operation, target, outcome, seconds)
        self._record_usage(
            UsageEvent(
                request_id=job.event.id[:256],
                service="storage_worker",
                tenant=job.tenant[:256] if job.tenant else None,
                operation=operation,
                target=None if target == UNKNOWN_TARGET else target,
                bytes=moved,
                latency_seconds=max(0.0, seconds),
                outcome=outcome,
                finished_at=datetime.now(UTC),
            )
        )

    def target(self, job: Job[Any]) -> str:
        """The configured backend the request used (a copy: the one it wrote to), or
        `unknown` when it names none the tenant has."""
        policy = self._policy()
        backend: str | None = getattr(job.request, "backend", None)
        try:
            space = space_of(policy, tenant_name(job.tenant), backend)
        except FerrymanError:
            return UNKNOWN_TARGET
        return space.backend if space.backend in policy.backends else UNKNOWN_TARGET
