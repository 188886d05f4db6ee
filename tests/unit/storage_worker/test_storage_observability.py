"""What a storage request leaves behind besides its reply: its count and duration
(`ferryman_requests_total`), one usage event, the bytes it moved, the backend calls
(`ferryman_upstream_calls_total` via the stats board), a span per backend operation without
the key, quota refusals and pipeline steps."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ferryman.codec import IncomingEvent
from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import (
    STORAGE_FAILED,
    GetRequest,
    HeadRequest,
    ProcessRequest,
    PutRequest,
    StorageFailed,
)
from ferryman.contracts.usage import UsageEvent
from ferryman_runtime.job import Job
from ferryman_runtime.replies import ReplyStream
from ferryman_runtime.resilience import Breaker, RetryPolicy
from ferryman_runtime.upstreams.stats import UpstreamStats
from storage_worker.events import ObjectEvents
from storage_worker.metrics import SIZE_BUCKETS, EventsCollector, StorageMetrics
from storage_worker.policy import Policy, parse_policy
from storage_worker.quotas import TenantQuotas
from storage_worker.resilient_store import ResilientStore
from storage_worker.service import StorageRequest, StorageService
from storage_worker.stores import Stores
from tests.unit.storage_worker.test_resilient_store import FlakyStore

SECRET_KEY = "reports/salary-of-alice.txt"
"""A key that is user data: it must not appear in any span."""


class Replies:
    """Records a job's terminal reply (stands in for its `ReplyStream`)."""

    def __init__(self) -> None:
        self.terminal: list[tuple[str, BaseModel | Any]] = []

    async def emit(self, event_type: str, payload: BaseModel) -> None:
        pass

    async def finish(self, event_type: str, payload: BaseModel) -> None:
        self.terminal.append((event_type, payload))

    async def fail(self, error: Any) -> None:
        self.terminal.append((STORAGE_FAILED, StorageFailed(error=error)))


class Events:
    """Records object events (stands in for `ObjectEvents`)."""

    async def created(self, *_: Any) -> None:
        pass

    async def deleted(self, *_: Any) -> None:
        pass


class Setup:
    def __init__(self, root: Path, rate_limit: dict[str, Any] | None = None) -> None:
        rule: dict[str, Any] = {"spaces": {"local": "{tenant}/"}}
        if rate_limit is not None:
            rule["rate_limit"] = rate_limit
        document = {
            "backends": {"local": {"type": "local", "root": str(root)}},
            "tenants": {"*": rule},
            "pipelines": {"sums": {"version": "1", "steps": [{"step": "checksum"}]}},
        }
        self.policy: Policy = parse_policy(json.dumps(document).encode())
        self.registry = CollectorRegistry()
        self.metrics = StorageMetrics(self.registry)
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.stores = Stores(metrics=self.metrics, tracer=provider.get_tracer("test"))
        self.stores.configure(self.policy)
        self.quotas = TenantQuotas(on_refused=self.metrics.quota_refused)
        self.quotas.configure(self.policy)
        self.usage: list[UsageEvent] = []
        self.service = StorageService(
            stores=self.stores,
            policy=lambda: self.policy,
            events=cast(ObjectEvents, Events()),
            inline_limit=65536,
            quotas=self.quotas,
            metrics=self.metrics,
            record_usage=self.usage.append,
        )

    async def run(self, request: StorageRequest) -> tuple[str, Any]:
        replies = Replies()
        event = IncomingEvent(
            attributes={"id": uuid.uuid4().hex, "source": "/test", "type": "t"},
            data=None,
            mode="binary",
        )
        job = Job(
            request=request,
            event=event,
            replies=cast(ReplyStream, replies),
            deadline=None,
            tenant="acme",
            tenant_share=1.0,
        )
        await self.service.execute(job)
        (terminal,) = replies.terminal
        return terminal

    def sample(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    made = Setup(tmp_path / "root")
    yield made
    await made.stores.close()


def put_request(data: bytes, key: str = SECRET_KEY) -> PutRequest:
    return PutRequest(key=key, content_base64=base64.b64encode(data).decode())


async def test_a_put_and_a_get_record_their_usage_and_bytes(setup: Setup) -> None:
    data = b"x" * 5000

    await setup.run(put_request(data))
    await setup.run(GetRequest(key=SECRET_KEY, delivery="inline"))

    assert [(e.operation, e.target, e.tenant, e.bytes, e.outcome) for e in setup.usage] == [
        ("put", "local", "acme", 5000, "completed"),
        ("get", "local", "acme", 5000, "completed"),
    ]
    assert all(e.service == "storage_worker" and e.user is None for e in setup.usage)
    for operation in ("put", "get"):
        labels = {"operation": operation, "target": "local", "outcome": "completed"}
        assert setup.sample("ferryman_requests_total", labels) == 1
        assert setup.sample("ferryman_request_duration_seconds_count", labels) == 1
    for direction in ("read", "write"):
        labels = {"backend": "local", "direction": direction}
        assert setup.sample("storage_worker_transferred_bytes_total", labels) == 5000
    size = {"backend": "local", "operation": "put", "le": "4096.0"}
    assert setup.sample("storage_worker_object_size_bytes_bucket", size) == 0
    assert setup.sample("storage_worker_object_size_bytes_bucket", size | {"le": "16384.0"}) == 1


async def test_every_backend_call_is_in_the_stats_board(setup: Setup) -> None:
    await setup.run(put_request(b"hello"))  # a head (not found: the caller's), then the put
    await setup.run(HeadRequest(key=SECRET_KEY))

    calls = setup.stores.stats.get("local").calls
    assert calls == {"ok": 2, "failed": 0, "rejected": 1}
    assert setup.stores.stats.get("local").in_flight == 0


async def test_backend_operations_are_spans_without_the_key(setup: Setup) -> None:
    await setup.run(put_request(b"hello"))
    await setup.run(HeadRequest(key="absent.txt"))

    spans = setup.spans.get_finished_spans()
    assert [s.name for s in spans] == ["storage head", "storage put", "storage head"]
    put_span = spans[1]
    assert put_span.kind is SpanKind.INTERNAL  # the local backend: no network
    assert dict(put_span.attributes or {}) == {
        "storage.backend": "local",
        "storage.operation": "put",
        "storage.object.size": 5,
    }
    missing = spans[2]
    assert dict(missing.attributes or {})["error.type"] == "not_found"
    assert missing.status.status_code is StatusCode.ERROR
    for span in spans:
        text = repr(dict(span.attributes or {})) + str(span.status.description) + span.name
        assert "salary" not in text
        assert "absent" not in text


async def test_a_failed_request_counts_with_its_error_code(setup: Setup) -> None:
    kind, failed = await setup.run(HeadRequest(key="absent.txt"))

    assert kind == STORAGE_FAILED
    assert failed.error.code == ErrorCode.NOT_FOUND
    labels = {"operation": "head", "target": "local", "outcome": "not_found"}
    assert setup.sample("ferryman_requests_total", labels) == 1
    assert [(e.operation, e.outcome, e.bytes) for e in setup.usage] == [("head", "not_found", 0)]


async def test_a_backend_the_tenant_has_no_space_on_is_counted_as_unknown(setup: Setup) -> None:
    await setup.run(HeadRequest(key="a.txt", backend="elsewhere"))

    labels = {"operation": "head", "target": "unknown", "outcome": "permission_denied"}
    assert setup.sample("ferryman_requests_total", labels) == 1
    assert setup.usage[0].target is None


async def test_a_quota_refusal_is_counted_by_tenant(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "root", rate_limit={"requests": 1, "window": 3600})
    try:
        await setup.run(HeadRequest(key="a.txt"))
        kind, failed = await setup.run(HeadRequest(key="a.txt"))
    finally:
        await setup.stores.close()

    assert kind == STORAGE_FAILED
    assert failed.error.code == ErrorCode.RATE_LIMITED
    refused = {"scope": "tenant", "tenant": "acme"}
    assert setup.sample("ferryman_quota_rejections_total", refused) == 1
    assert setup.usage[-1].outcome == "rate_limited"


async def test_pipeline_steps_are_counted_by_kind(setup: Setup) -> None:
    await setup.run(put_request(b"some text"))

    await setup.run(ProcessRequest(key=SECRET_KEY, pipeline="sums"))

    labels = {"step": "checksum", "outcome": "completed"}
    assert setup.sample("storage_worker_pipeline_steps_total", labels) == 1
    assert setup.usage[-1].operation == "process"
    assert setup.usage[-1].bytes == len(b"some text")  # the source read once


async def test_a_retryable_backend_failure_counts_against_it(tmp_path: Path) -> None:
    flaky = FlakyStore(tmp_path)
    stats = UpstreamStats()
    store = ResilientStore(
        flaky,
        breaker=Breaker("flaky", fail_max=10, reset_timeout=30),
        retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0),
        stats=stats,
    )
    flaky.failures.append(FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True))
    flaky.failures.append(FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True))

    with pytest.raises(FerrymanError):
        await store.head("k")

    assert stats.calls == {"ok": 0, "failed": 2, "rejected": 0}


def test_object_events_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    events = ObjectEvents(lambda: None, "events", source="/test")
    registry.register(EventsCollector(events))
    events.published, events.failed = 3, 1

    published = registry.get_sample_value(
        "storage_worker_events_published_total", {"outcome": "published"}
    )
    failed = registry.get_sample_value(
        "storage_worker_events_published_total", {"outcome": "failed"}
    )
    assert (published, failed) == (3, 1)


def test_size_buckets_run_from_1_kib_to_5_gib_by_four() -> None:
    assert SIZE_BUCKETS[0] == 1024
    assert SIZE_BUCKETS[-1] == 5 * 1024**3
    assert all(b == a * 4 for a, b in itertools.pairwise(SIZE_BUCKETS[:-1]))
